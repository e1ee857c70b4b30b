/* Publish, change sharing and unpublish in place, from any card or page that has publish controls
 * (templates/gallery/_publish_controls.html) and the dialog (_publish_dialog.html). Without
 * JavaScript the same links and forms go to the publish page and come back. */
(function () {
  "use strict";
  var dialog = document.getElementById("publish-dialog");
  if (!dialog || typeof dialog.showModal !== "function") return;
  var form = dialog.querySelector("form");
  var errorEl = dialog.querySelector(".publish-error");
  var L = dialog.dataset;
  var current = null; // the publish URL being edited

  function csrf() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function send(method, url, body) {
    return fetch(url, {
      method: method, body: body, credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrf() }
    }).then(function (resp) {
      return resp.json().then(function (data) { return { ok: resp.ok, data: data }; });
    });
  }

  // Every copy of an image's controls (a card and the viewer) shows the new state.
  function showState(state) {
    document.querySelectorAll('.publish-controls[data-image-id="' + state.image_id + '"]').forEach(function (box) {
      box.querySelector(".publish-state").hidden = !state.published;
      box.querySelector(".published-badge").textContent = state.visibility === "unlisted" ? L.labelUnlisted : L.labelPublic;
      if (state.gallery_url) box.querySelector(".gallery-link").href = state.gallery_url;
      box.querySelector(".unpublish-form").hidden = !state.published;
      box.querySelector(".publish-open").textContent = state.published ? L.labelSharing : L.labelPublish;
      box.dataset.published = state.published ? "true" : "false";
    });
  }

  function open(box) {
    current = box.dataset.publishUrl;
    errorEl.hidden = true;
    send("GET", current).then(function (r) {
      if (!r.ok) { window.location.href = current; return; }
      var state = r.data;
      form.elements.visibility.value = state.published ? state.visibility : "public";
      form.elements.title.value = state.title || "";
      form.elements.description.value = state.description || "";
      form.elements.mature.checked = !!state.mature;
      form.elements.mature.disabled = !!state.mature_locked;
      dialog.showModal();
      form.elements.title.focus();
    }).catch(function () { window.location.href = current; });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a.publish-open");
    if (!link) return;
    event.preventDefault();
    open(link.closest(".publish-controls"));
  });

  form.addEventListener("submit", function (event) {
    if (!event.submitter || event.submitter.value !== "save") return; // Cancel closes the dialog
    event.preventDefault();
    var body = new FormData();
    body.append("visibility", form.elements.visibility.value);
    body.append("title", form.elements.title.value);
    body.append("description", form.elements.description.value);
    if (form.elements.mature.checked) body.append("mature", "on");
    send("POST", current, body).then(function (r) {
      if (r.ok) { showState(r.data); dialog.close(); return; }
      var errors = r.data && r.data.errors ? Object.keys(r.data.errors).map(function (k) { return r.data.errors[k].join(" "); }) : [];
      errorEl.textContent = errors.join(" ") || (r.data && r.data.detail) || L.labelFailed;
      errorEl.hidden = false;
    }).catch(function () { errorEl.textContent = L.labelFailed; errorEl.hidden = false; });
  });

  document.addEventListener("submit", function (event) {
    var unpublishForm = event.target.closest("form.unpublish-form");
    if (!unpublishForm) return;
    event.preventDefault();
    send("POST", unpublishForm.action, new FormData(unpublishForm)).then(function (r) {
      if (r.ok) showState(r.data);
    });
  });

  window.AtelierPublish = { showState: showState };
})();
