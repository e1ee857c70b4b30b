/* The in-page image viewer: any card with data-viewer-* opens it; previous/next follow the cards'
 * order on the page (arrow keys too), and its actions are the card's own (publish controls are
 * the card's, cloned, so publish.js keeps both in step). */
(function () {
  "use strict";
  var dialog = document.getElementById("image-viewer");
  if (!dialog || typeof dialog.showModal !== "function") return;
  var img = dialog.querySelector(".viewer-image");
  var index = -1;

  function cards() { return Array.prototype.slice.call(document.querySelectorAll("[data-viewer-src]")); }

  function csrf() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function link(selector, href) {
    var a = dialog.querySelector(selector);
    a.hidden = !href;
    if (href) a.href = href;
    return a;
  }

  function show(i) {
    var list = cards();
    if (!list.length) { dialog.close(); return; }
    index = (i + list.length) % list.length;
    var card = list[index];
    var d = card.dataset;
    img.src = d.viewerSrc;
    img.alt = d.viewerTitle || "";
    dialog.querySelector(".viewer-title").textContent = d.viewerTitle || "";
    dialog.querySelector(".viewer-count").textContent = (index + 1) + " / " + list.length;
    dialog.querySelector(".viewer-info").textContent = d.viewerInfo || "";
    link(".viewer-reuse", d.viewerReuse);
    link(".viewer-img2img", d.viewerImg2img);
    link(".viewer-detail", d.viewerDetail);
    link(".viewer-download", d.viewerSrc).setAttribute("download", d.viewerDownload || "atelier.png");
    dialog.querySelector(".viewer-delete").hidden = !d.viewerDelete;
    var upscale = dialog.querySelector(".viewer-upscale"); // the card's Upscale (upscale.js)
    upscale.textContent = "";
    var button = card.querySelector("a.upscale-open");
    if (button) upscale.appendChild(button.cloneNode(true));
    var slot = dialog.querySelector(".viewer-publish");
    slot.textContent = "";
    var controls = card.querySelector(".publish-controls");
    if (controls) slot.appendChild(controls.cloneNode(true));
    var several = list.length > 1;
    dialog.querySelector(".viewer-prev").hidden = !several;
    dialog.querySelector(".viewer-next").hidden = !several;
  }

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("a.viewer-open");
    if (!opener || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    var card = opener.closest("[data-viewer-src]");
    if (!card) return;
    event.preventDefault();
    show(cards().indexOf(card));
    if (!dialog.open) dialog.showModal();
  });

  dialog.querySelector(".viewer-prev").addEventListener("click", function () { show(index - 1); });
  dialog.querySelector(".viewer-next").addEventListener("click", function () { show(index + 1); });
  dialog.querySelector(".viewer-close").addEventListener("click", function () { dialog.close(); });
  dialog.addEventListener("click", function (event) { if (event.target === dialog) dialog.close(); });
  dialog.addEventListener("keydown", function (event) {
    if (event.target.closest("input, textarea")) return;
    if (event.key === "ArrowLeft") { event.preventDefault(); show(index - 1); }
    if (event.key === "ArrowRight") { event.preventDefault(); show(index + 1); }
  });

  dialog.querySelector(".viewer-delete").addEventListener("click", function () {
    var card = cards()[index];
    if (!card || !window.confirm(dialog.dataset.confirmDelete)) return;
    var body = new FormData();
    body.append("csrfmiddlewaretoken", csrf());
    fetch(card.dataset.viewerDelete, { method: "POST", body: body, credentials: "same-origin" }).then(function (resp) {
      if (!resp.ok) return;
      card.remove();
      show(index); // the next one slides into this place
    });
  });
})();
