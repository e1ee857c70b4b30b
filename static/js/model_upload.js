// My models: a resumable upload over the tus protocol (creation + core), with a progress bar
// showing bytes, speed and time left. A dropped connection resumes from the server's offset;
// the upload's address is kept in localStorage so a reload resumes too.
(function () {
  "use strict";
  var form = document.getElementById("model-upload");
  if (!form) return;
  var bar = document.getElementById("model-upload-progress");
  var statusLine = document.getElementById("model-upload-status");
  var chunkBytes = parseInt(form.dataset.chunkBytes, 10);
  var endpoint = form.dataset.endpoint;
  var L = form.dataset; // the page's translated messages
  var TUS = { "Tus-Resumable": "1.0.0" };

  function headers(extra) {
    var all = { "X-CSRFToken": form.querySelector("input[name=csrfmiddlewaretoken]").value };
    Object.keys(TUS).concat(Object.keys(extra || {})).forEach(function (key) {
      all[key] = (extra && key in extra) ? extra[key] : TUS[key];
    });
    return all;
  }

  function b64(text) { return btoa(unescape(encodeURIComponent(text))); }

  function mib(bytes) { return (bytes / 1048576).toFixed(1) + " MiB"; }

  function detail(response) {
    return response.text().then(function (text) {
      try { var body = JSON.parse(text); return body.detail || body; } catch (e) { return text; }
    });
  }

  function create(file, name) {
    var platform = form.querySelector("input[name=platform]");
    var metadata = "name " + b64(name) + (platform && platform.checked ? ",platform " + b64("1") : "");
    return fetch(endpoint, {
      method: "POST",
      credentials: "same-origin",
      headers: headers({ "Upload-Length": String(file.size), "Upload-Metadata": metadata }),
    }).then(function (response) {
      if (response.status !== 201) return detail(response).then(function (d) { throw new Error(d); });
      return response.headers.get("Location");
    });
  }

  function fmt(text, values) {
    return text.replace(/\{(\w+)\}/g, function (whole, key) { return key in values ? values[key] : whole; });
  }

  function offsetOf(location) {
    return fetch(location, { method: "HEAD", credentials: "same-origin", headers: headers() })
      .then(function (response) {
        if (!response.ok) return null;
        return parseInt(response.headers.get("Upload-Offset"), 10);
      });
  }

  function show(sent, total, started, startOffset) {
    var seconds = (Date.now() - started) / 1000;
    var speed = seconds > 0 ? (sent - startOffset) / seconds : 0;
    var left = speed > 0 ? Math.round((total - sent) / speed) : null;
    bar.value = total ? Math.floor((sent / total) * 100) : 0;
    statusLine.textContent = mib(sent) + " / " + mib(total) + " · " + mib(speed) + "/s" +
      (left === null ? "" : " · " + fmt(L.left, { s: left }));
  }

  function sendFrom(file, location, offset, started, startOffset, retries) {
    if (offset >= file.size) return fetch(location, { credentials: "same-origin", headers: headers() })
      .then(function (r) { return r.json(); });
    var chunk = file.slice(offset, Math.min(offset + chunkBytes, file.size));
    return fetch(location, {
      method: "PATCH",
      credentials: "same-origin",
      headers: headers({ "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" }),
      body: chunk,
    }).then(function (response) {
      if (response.status === 204) {
        var next = parseInt(response.headers.get("Upload-Offset"), 10);
        show(next, file.size, started, startOffset);
        return sendFrom(file, location, next, started, startOffset, 0);
      }
      if (response.status >= 500 || response.status === 409) throw new Error("retry");
      return detail(response).then(function (d) { var e = new Error(d); e.final = true; throw e; });
    }).catch(function (error) {
      if (error.final || retries >= 5) throw error;
      // The connection dropped (or the offset moved): ask the server where to resume.
      return new Promise(function (wait) { setTimeout(wait, 1000 * (retries + 1)); })
        .then(function () { return offsetOf(location); })
        .then(function (resumeAt) {
          if (resumeAt === null) throw error;
          return sendFrom(file, location, resumeAt, started, startOffset, retries + 1);
        });
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var file = form.querySelector("input[type=file]").files[0];
    var name = form.querySelector("input[name=name]").value.trim();
    if (!file) return;
    var key = "atelier-upload:" + file.name + ":" + file.size + ":" + file.lastModified + ":" + name;
    var kept = window.localStorage.getItem(key);
    bar.hidden = false;
    var started = Date.now();
    var begin = kept ? offsetOf(kept).then(function (offset) {
      return offset === null ? create(file, name).then(function (l) { return [l, 0]; }) : [kept, offset];
    }) : create(file, name).then(function (l) { return [l, 0]; });
    begin.then(function (where) {
      window.localStorage.setItem(key, where[0]);
      return sendFrom(file, where[0], where[1], started, where[1], 0);
    }).then(function (result) {
      window.localStorage.removeItem(key);
      statusLine.textContent = result.model ? fmt(L.uploadedModel, result.model) : L.uploaded;
      window.setTimeout(function () { window.location.reload(); }, 800);
    }).catch(function (error) {
      window.localStorage.removeItem(key);
      statusLine.textContent = fmt(L.refused, { reason: error.message });
    });
  });
})();
