/* The inpaint mask editor on the generator's img2img panel.
 *
 * Paints a mask over the source image shown in #init-preview: brush with a size, eraser, undo,
 * invert, clear, zoom to fit, or an uploaded mask drawn into the editor. Pointer events, so a
 * mouse, a pen and a finger all paint. The mask is kept at the source's own pixel size as white
 * strokes on transparency and sent as a white-on-black PNG (white = repaint) with the inpaint
 * options, through `window.AtelierInpaint.addTo(params)`, which generator.js calls while it
 * builds an img2img request.
 */
(function () {
  "use strict";

  var form = document.getElementById("generator-form");
  var editor = document.getElementById("mask-editor");
  var preview = document.getElementById("init-preview");
  if (!form || !editor || !preview) return;

  var fields = form.elements;
  var stage = document.getElementById("mask-stage");
  var tools = editor.querySelector(".mask-tools");
  var view = document.getElementById("mask-canvas");
  var brush = document.getElementById("mask-brush");
  var paintButton = document.getElementById("mask-paint");
  var eraseButton = document.getElementById("mask-erase");
  var MAX_UNDO = 30;
  var OVERLAY = "rgba(255, 64, 64, 0.5)";

  var source = null; // HTMLImageElement of the source
  var mask = document.createElement("canvas"); // white strokes on transparency, source size
  var maskCtx = mask.getContext("2d");
  var undo = [];
  var erasing = false;
  var stroke = null; // {x, y} of the last point while a pointer paints
  var painted = false; // whether anything was ever painted or uploaded
  var pendingMask = editor.dataset.maskUrl || null; // a remix's mask, drawn once its source is in
  var reveal = editor.dataset.open === "1"; // "Send to inpaint": show the editor once loaded

  // ---- showing -----------------------------------------------------------------------------

  function redraw() {
    if (!source) return;
    var ctx = view.getContext("2d");
    ctx.globalCompositeOperation = "source-over";
    ctx.clearRect(0, 0, view.width, view.height);
    ctx.drawImage(source, 0, 0);
    // The mask tinted: draw it, then colour only where it is opaque.
    var tint = document.createElement("canvas");
    tint.width = mask.width;
    tint.height = mask.height;
    var tintCtx = tint.getContext("2d");
    tintCtx.drawImage(mask, 0, 0);
    tintCtx.globalCompositeOperation = "source-in";
    tintCtx.fillStyle = OVERLAY;
    tintCtx.fillRect(0, 0, tint.width, tint.height);
    ctx.drawImage(tint, 0, 0);
  }

  function zoomToFit() {
    if (!source) return;
    var room = Math.max(120, (stage.clientWidth || editor.clientWidth) - 4);
    var scale = Math.min(4, room / source.naturalWidth); // small sources grow, to paint finely
    view.style.width = Math.round(source.naturalWidth * scale) + "px";
    view.style.height = Math.round(source.naturalHeight * scale) + "px";
  }

  function loadSource(url) {
    if (!url) { reset(); return; }
    var image = new Image();
    image.onload = function () {
      var sameSize = source && source.naturalWidth === image.naturalWidth &&
        source.naturalHeight === image.naturalHeight;
      source = image;
      view.width = image.naturalWidth;
      view.height = image.naturalHeight;
      if (!sameSize) {
        mask.width = image.naturalWidth;
        mask.height = image.naturalHeight;
        undo = [];
        painted = false;
      }
      stage.hidden = false;
      tools.hidden = false;
      zoomToFit();
      redraw();
      if (pendingMask) { setMask(pendingMask); pendingMask = null; }
      if (reveal) { reveal = false; editor.scrollIntoView({ behavior: "smooth", block: "start" }); }
    };
    image.src = url;
  }

  function reset() {
    source = null;
    stage.hidden = true;
    tools.hidden = true;
    maskCtx.clearRect(0, 0, mask.width, mask.height);
    undo = [];
    painted = false;
  }

  // The generator sets and clears #init-preview's src: follow it.
  new MutationObserver(function () {
    loadSource(preview.hidden ? null : preview.getAttribute("src"));
  }).observe(preview, { attributes: true, attributeFilter: ["src", "hidden"] });
  if (preview.getAttribute("src") && !preview.hidden) loadSource(preview.getAttribute("src"));

  // ---- painting ----------------------------------------------------------------------------

  function remember() {
    if (!mask.width) return;
    undo.push(maskCtx.getImageData(0, 0, mask.width, mask.height));
    if (undo.length > MAX_UNDO) undo.shift();
  }

  function point(event) {
    var rect = view.getBoundingClientRect();
    return {
      x: (event.clientX - rect.left) * (view.width / rect.width),
      y: (event.clientY - rect.top) * (view.height / rect.height)
    };
  }

  function brushWidth(event) {
    var rect = view.getBoundingClientRect();
    var size = Number(brush.value) * (view.width / rect.width); // the size as seen on screen
    var pressure = event.pointerType === "pen" && event.pressure > 0 ? event.pressure * 2 : 1;
    return Math.max(1, size * Math.min(pressure, 1.5));
  }

  function paintTo(event) {
    var at = point(event);
    maskCtx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    maskCtx.strokeStyle = "#fff";
    maskCtx.fillStyle = "#fff";
    maskCtx.lineCap = "round";
    maskCtx.lineJoin = "round";
    maskCtx.lineWidth = brushWidth(event);
    maskCtx.beginPath();
    maskCtx.moveTo(stroke.x, stroke.y);
    maskCtx.lineTo(at.x + 0.01, at.y);
    maskCtx.stroke();
    stroke = at;
    painted = true;
    redraw();
  }

  view.addEventListener("pointerdown", function (event) {
    if (!source || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    view.setPointerCapture(event.pointerId);
    remember();
    stroke = point(event);
    paintTo(event);
  });
  view.addEventListener("pointermove", function (event) {
    if (stroke) paintTo(event);
  });
  function endStroke() { stroke = null; }
  view.addEventListener("pointerup", endStroke);
  view.addEventListener("pointercancel", endStroke);

  function setErasing(value) {
    erasing = value;
    paintButton.setAttribute("aria-pressed", String(!value));
    eraseButton.setAttribute("aria-pressed", String(value));
  }
  paintButton.addEventListener("click", function () { setErasing(false); });
  eraseButton.addEventListener("click", function () { setErasing(true); });

  document.getElementById("mask-undo").addEventListener("click", function () {
    var last = undo.pop();
    if (last) { maskCtx.putImageData(last, 0, 0); redraw(); }
  });
  document.getElementById("mask-clear").addEventListener("click", function () {
    remember();
    maskCtx.clearRect(0, 0, mask.width, mask.height);
    redraw();
  });
  document.getElementById("mask-invert").addEventListener("click", function () {
    if (!mask.width) return;
    remember();
    var data = maskCtx.getImageData(0, 0, mask.width, mask.height);
    for (var i = 0; i < data.data.length; i += 4) {
      data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
      data.data[i + 3] = 255 - data.data[i + 3];
    }
    maskCtx.putImageData(data, 0, 0);
    painted = true;
    redraw();
  });
  document.getElementById("mask-fit").addEventListener("click", zoomToFit);
  window.addEventListener("resize", zoomToFit);

  // An uploaded mask (white = repaint) becomes the editor's mask, to be touched up.
  fields.mask.addEventListener("change", function () {
    var file = fields.mask.files && fields.mask.files[0];
    if (!file || !mask.width) return;
    var url = URL.createObjectURL(file);
    var image = new Image();
    image.onload = function () {
      remember();
      var scratch = document.createElement("canvas");
      scratch.width = mask.width;
      scratch.height = mask.height;
      var scratchCtx = scratch.getContext("2d");
      scratchCtx.drawImage(image, 0, 0, mask.width, mask.height); // stretched, as the server does
      var data = scratchCtx.getImageData(0, 0, mask.width, mask.height);
      for (var i = 0; i < data.data.length; i += 4) {
        var bright = (data.data[i] + data.data[i + 1] + data.data[i + 2]) / 3;
        var on = data.data[i + 3] > 128 && bright > 128;
        data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
        data.data[i + 3] = on ? 255 : 0;
      }
      maskCtx.putImageData(data, 0, 0);
      painted = true;
      URL.revokeObjectURL(url);
      redraw();
    };
    image.src = url;
  });

  // ---- the request -------------------------------------------------------------------------

  // One "Mask blur" input, as in A1111's page: it sets both axes.
  fields.inpaint_mask_blur_x.addEventListener("input", function () {
    fields.inpaint_mask_blur_y.value = fields.inpaint_mask_blur_x.value;
  });

  function maskHasPixels() {
    if (!painted || !mask.width) return false;
    var data = maskCtx.getImageData(0, 0, mask.width, mask.height).data;
    for (var i = 3; i < data.length; i += 4) if (data[i] > 128) return true;
    return false;
  }

  function maskPngBase64() {
    var out = document.createElement("canvas");
    out.width = mask.width;
    out.height = mask.height;
    var ctx = out.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(mask, 0, 0);
    var url = out.toDataURL("image/png");
    return url.slice(url.indexOf(",") + 1);
  }

  function number(value, parse) {
    var n = parse(value);
    return isNaN(n) ? null : n;
  }

  function inpaintOptions() {
    return {
      mask_blur_x: number(fields.inpaint_mask_blur_x.value, parseInt),
      mask_blur_y: number(fields.inpaint_mask_blur_y.value, parseInt),
      inpainting_fill: number(fields.inpaint_inpainting_fill.value, parseInt),
      inpaint_full_res: fields.inpaint_inpaint_full_res.checked,
      inpaint_full_res_padding: number(fields.inpaint_inpaint_full_res_padding.value, parseInt),
      inpainting_mask_invert: fields.inpaint_inpainting_mask_invert.checked,
      initial_noise_multiplier: number(fields.inpaint_initial_noise_multiplier.value, parseFloat),
      outpaint_left: number(fields.inpaint_outpaint_left.value, parseInt) || 0,
      outpaint_top: number(fields.inpaint_outpaint_top.value, parseInt) || 0,
      outpaint_right: number(fields.inpaint_outpaint_right.value, parseInt) || 0,
      outpaint_bottom: number(fields.inpaint_outpaint_bottom.value, parseInt) || 0
    };
  }

  // Called by generator.js for an img2img request: add the mask and the options when there is
  // something to inpaint (a painted or uploaded mask, or sides to outpaint).
  function addTo(params) {
    var options = inpaintOptions();
    var grows = options.outpaint_left || options.outpaint_top || options.outpaint_right ||
      options.outpaint_bottom;
    var hasMask = maskHasPixels();
    if (!hasMask && !grows) return params;
    if (hasMask) params.mask = maskPngBase64();
    params.inpaint = options;
    return params;
  }

  // A remix of an inpaint job: its mask over its source (both loaded by the generator).
  function setMask(url) {
    var image = new Image();
    image.onload = function () {
      if (!mask.width) { mask.width = image.naturalWidth; mask.height = image.naturalHeight; }
      var scratch = document.createElement("canvas");
      scratch.width = mask.width;
      scratch.height = mask.height;
      var ctx = scratch.getContext("2d");
      ctx.drawImage(image, 0, 0, mask.width, mask.height);
      var data = ctx.getImageData(0, 0, mask.width, mask.height);
      for (var i = 0; i < data.data.length; i += 4) {
        var on = data.data[i] > 128;
        data.data[i] = data.data[i + 1] = data.data[i + 2] = 255;
        data.data[i + 3] = on ? 255 : 0;
      }
      maskCtx.putImageData(data, 0, 0);
      painted = true;
      redraw();
    };
    image.src = url;
  }

  // "Send to inpaint" on a result made on this page: load it as the source like "Send to
  // img2img" (generator.js), then show the editor.
  var results = document.getElementById("results");
  if (results) {
    results.addEventListener("click", function (event) {
      var link = event.target.closest("a.result-inpaint");
      if (!link || link.getAttribute("href")) return; // a server-made link: follow it
      var img2img = link.closest("[data-image-id]").querySelector("a.result-img2img");
      event.preventDefault();
      reveal = true;
      img2img.click();
    });
  }

  window.AtelierInpaint = { addTo: addTo, setMask: setMask };
})();
