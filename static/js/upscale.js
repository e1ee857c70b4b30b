/* The Upscale button on every result: a small dialog (templates/generation/_upscale_dialog.html)
 * submits an Extras job to POST /api/v1/extras/ and follows it like any job: its place in the
 * queue, then tiles done, over the /ws/jobs/ websocket, polling GET /api/v1/jobs/{id}/ while the
 * socket is closed. Stop cancels it. Without JavaScript the button opens the Upscale page. */
(function () {
  "use strict";
  var dialog = document.getElementById("upscale-dialog");
  if (!dialog || typeof dialog.showModal !== "function") return;
  var form = dialog.querySelector("form");
  var L = dialog.dataset;
  var errorEl = dialog.querySelector(".upscale-error");
  var box = dialog.querySelector(".upscale-progress");
  var bar = box.querySelector("progress");
  var statusEl = box.querySelector(".upscale-status");
  var resultEl = box.querySelector(".upscale-result");
  var stopButton = dialog.querySelector(".upscale-stop");
  var imageId = null;
  var job = null; // {id, status}
  var socket = null;
  var timer = null;

  function csrf() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    var cookie = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return input ? input.value : cookie ? decodeURIComponent(cookie[1]) : "";
  }

  function send(method, url, body) {
    return fetch(url, {
      method: method, credentials: "same-origin", body: body ? JSON.stringify(body) : undefined,
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrf() }
    }).then(function (resp) {
      return resp.json().then(function (data) { return { ok: resp.ok, data: data }; });
    });
  }

  function show(text, done, total) {
    box.hidden = false;
    statusEl.textContent = text;
    if (total) { bar.max = total; bar.value = done; } else { bar.removeAttribute("value"); }
  }

  function finish(status, data) {
    stopButton.hidden = true;
    stop();
    if (status === "succeeded" && data.images && data.images.length) {
      var image = data.images[0];
      show(L.labelDone + " " + image.width + "×" + image.height, 1, 1);
      resultEl.href = "/images/" + image.id + "/";
      resultEl.querySelector("img").src = image.thumbnail_url || image.url;
      resultEl.hidden = false;
    } else if (status === "failed") {
      show(L.labelFailed + (data.error ? ": " + data.error : ""), 0, 1);
    } else {
      show(L.labelCancelled, 0, 1);
    }
  }

  function onJob(data) { // a REST job, or a websocket event about ours
    if (!job || (data.id || data.job_id) !== job.id) return;
    var kind = data.type || ("job." + data.status);
    if (kind === "job.queued") show(L.labelQueued + (data.position ? " (" + data.position + ")" : ""));
    else if (kind === "job.started" || kind === "job.running") show(L.labelRunning, data.steps_done || 0, data.steps || data.total_steps);
    else if (kind === "job.progress") show(L.labelRunning + " " + data.step + "/" + data.steps, data.step, data.steps);
    else if (kind === "job.succeeded" && !data.images) poll(); // the event names the images; the job has them all
    else if (kind === "job.succeeded" || kind === "job.failed" || kind === "job.cancelled") finish(kind.slice(4), data);
  }

  function poll() {
    if (!job) return;
    send("GET", "/api/v1/jobs/" + job.id + "/").then(function (r) { if (r.ok) onJob(r.data); });
  }

  function follow() {
    if ("WebSocket" in window) {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + window.location.host + L.ws);
      socket.onmessage = function (message) {
        try { onJob(JSON.parse(message.data)); } catch (e) { /* not ours */ }
      };
    }
    timer = window.setInterval(function () {
      if (!socket || socket.readyState !== 1) poll(); // polling while the socket is not open
    }, 1500);
  }

  function stop() {
    if (socket) { socket.onmessage = null; socket.close(); socket = null; }
    if (timer) { window.clearInterval(timer); timer = null; }
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a.upscale-open");
    if (!link || !link.dataset.imageId) return;
    event.preventDefault();
    imageId = link.dataset.imageId;
    job = null;
    stop();
    errorEl.hidden = true;
    box.hidden = true;
    resultEl.hidden = true;
    stopButton.hidden = true;
    dialog.showModal();
  });

  form.addEventListener("submit", function (event) {
    if (!event.submitter || event.submitter.value !== "upscale") { stop(); return; } // Close
    event.preventDefault();
    var body = { image_id: imageId };
    ["upscaler_1", "scale", "upscaler_2", "upscaler_2_visibility"].forEach(function (name) {
      body[name] = form.elements[name].value;
    });
    errorEl.hidden = true;
    send("POST", L.api, body).then(function (r) {
      if (!r.ok) {
        errorEl.textContent = (r.data && (r.data.message || r.data.detail)) || L.labelError;
        errorEl.hidden = false;
        return;
      }
      job = { id: r.data.id };
      stopButton.hidden = false;
      resultEl.hidden = true;
      show(L.labelQueued, 0, r.data.total_steps);
      onJob(r.data);
      follow();
    }).catch(function () { errorEl.textContent = L.labelError; errorEl.hidden = false; });
  });

  stopButton.addEventListener("click", function () {
    if (job) send("POST", "/api/v1/jobs/" + job.id + "/cancel/").then(poll);
  });
})();
