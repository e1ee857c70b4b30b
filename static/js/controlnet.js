/* The generator's ControlNet section (templates/generation/_controlnet.html).
 *
 * Without this script every unit the tier allows shows with an "Enabled" box and the form posts
 * them. With it: "Add ControlNet unit" and "Remove unit" show and hide units (up to the tier's
 * limit), the model list keeps to ControlNets of the chosen checkpoint's family, "Preview" asks
 * a GPU worker for the preprocessor's map (REST controlnet/detect/, free), a reused job's kept
 * control image (data-kept-image, its owner's only) is sent again unless another is chosen, and
 * generator.js sends the shown units through `window.AtelierControlNet.addTo(params)`. Choosing a
 * preprocessor shows its sliders (DATA.controlnet_sliders: the extension's names, ranges and
 * defaults) in the threshold fields and hides the ones it does not use.
 */
(function () {
  "use strict";

  var box = document.getElementById("controlnet-options");
  var dataEl = document.getElementById("generator-data");
  var form = document.getElementById("generator-form");
  if (!box || !dataEl || !form) return;
  var DATA = JSON.parse(dataEl.textContent);
  var T = DATA.strings;
  var units = Array.prototype.slice.call(box.querySelectorAll(".cn-unit"));
  var addButton = document.getElementById("cn-add");
  var images = {}; // unit index -> data: URI of its control image
  var kept = {}; // unit index -> data: URI of the image a reused job kept (Reuse)

  function fmt(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_m, key) { return String(values[key]); });
  }
  function field(unit, name) { return form.elements["cn-" + unit.dataset.index + "-" + name]; }
  function enabled(unit) { return field(unit, "enabled").checked; }
  function number(unit, name) {
    var value = field(unit, name).value;
    var n = Number(value);
    return value === "" || isNaN(n) ? value : n; // the server names an unreadable one
  }
  function changed() { form.dispatchEvent(new Event("change")); } // the live price

  // ---- add / remove: the "Enabled" boxes stay the truth, hidden behind the buttons ----------

  function layout() {
    units.forEach(function (unit) {
      unit.hidden = !enabled(unit);
      unit.querySelector(".cn-enabled-label").hidden = true;
      unit.querySelector(".cn-remove").hidden = false;
      unit.querySelector(".cn-preview-button").hidden = false;
    });
    addButton.hidden = units.every(enabled);
  }
  addButton.addEventListener("click", function () {
    var next = units.filter(function (u) { return !enabled(u); })[0];
    if (!next) return;
    field(next, "enabled").checked = true;
    layout();
    field(next, "image").focus();
    changed();
  });
  units.forEach(function (unit) {
    unit.querySelector(".cn-remove").addEventListener("click", function () {
      field(unit, "enabled").checked = false;
      layout();
      changed();
    });
    field(unit, "image").addEventListener("change", function () {
      var file = field(unit, "image").files[0];
      delete images[unit.dataset.index];
      showKept(unit, !file); // cleared: a reused job's image (if any) is the unit's again
      if (!file) return;
      var reader = new FileReader();
      reader.onload = function () { images[unit.dataset.index] = String(reader.result); changed(); };
      reader.readAsDataURL(file);
    });
    unit.querySelector(".cn-preview-button").addEventListener("click", function () { preview(unit); });
  });

  // ---- Reuse: the control image the member's own job kept, sent again as hers --------------

  // Until they are here the page quotes no price (a unit without its image would be refused).
  var keptLoading = 0;
  units.forEach(function (unit) {
    var url = unit.dataset.keptImage;
    if (!url) return;
    keptLoading += 1;
    fetch(url, { credentials: "same-origin" }).then(function (resp) {
      if (!resp.ok) throw new Error(String(resp.status));
      return resp.blob();
    }).then(function (blob) {
      var reader = new FileReader();
      reader.onload = function () {
        kept[unit.dataset.index] = String(reader.result);
        unit.dataset.keptLoaded = "1";
        keptLoading -= 1;
        showKept(unit, !field(unit, "image").files.length);
        changed();
      };
      reader.readAsDataURL(blob);
    }).catch(function () {
      keptLoading -= 1;
      showKept(unit, false);
      changed();
    });
  });
  function showKept(unit, shown) {
    var index = unit.dataset.index;
    shown = shown && !!unit.dataset.keptImage;
    unit.querySelectorAll(".cn-kept, .cn-kept-note").forEach(function (el) { el.hidden = !shown; });
    if (shown && kept[index]) images[index] = kept[index];
  }

  // ---- models of the checkpoint's family only -------------------------------------------------

  var checkpoint = form.elements.checkpoint;
  function family() { return DATA.checkpoint_families[checkpoint.value] || "unknown"; }
  function filterModels() {
    var wanted = family();
    units.forEach(function (unit) {
      var select = field(unit, "model");
      var firstFit = null;
      Array.prototype.forEach.call(select.options, function (option) {
        var fam = option.dataset.family || "unknown";
        var fits = fam === "unknown" || wanted === "unknown" || fam === wanted;
        option.hidden = option.disabled = !fits;
        if (fits && firstFit === null) firstFit = option;
      });
      var current = select.options[select.selectedIndex];
      if ((!current || current.disabled) && firstFit) select.value = firstFit.value;
    });
  }
  checkpoint.addEventListener("change", filterModels);

  // ---- each module's sliders: label, range and default of threshold_a/b, as the extension's UI --

  var SLIDERS = DATA.controlnet_sliders || {};
  function sliders(unit) { return SLIDERS[field(unit, "module").value] || null; }
  function showSliders(unit, reset) {
    var table = sliders(unit);
    if (!table) return; // a module the page does not know: leave the fields as they are
    field(unit, "processor_res").closest(".field").hidden = !table.resolution;
    ["threshold_a", "threshold_b"].forEach(function (name) {
      var input = field(unit, name);
      var slider = table[name];
      input.closest(".field").hidden = !slider;
      if (!slider) return;
      var label = unit.querySelector("label[for='" + input.id + "']");
      if (label) label.textContent = slider.name;
      input.min = slider.min;
      input.max = slider.max;
      input.step = slider.step || "any";
      if (reset) input.value = slider.value;
    });
  }
  units.forEach(function (unit) {
    showSliders(unit, false); // a reused or refused unit keeps its values
    field(unit, "module").addEventListener("change", function () { showSliders(unit, true); });
  });
  function slider(unit, name) {
    var table = sliders(unit);
    return table && !table[name] ? undefined : number(unit, name); // unused: the module's default
  }

  // ---- the request ----------------------------------------------------------------------------

  function sourceImage() {
    var source = document.getElementById("init-preview");
    return source && !source.hidden && source.src.indexOf("data:") === 0 ? source.src : null;
  }
  function base64(dataUri) { return dataUri ? dataUri.slice(dataUri.indexOf(",") + 1) : null; }

  function unitParams(unit) {
    return {
      image: base64(images[unit.dataset.index]), // null: img2img's source
      module: field(unit, "module").value,
      model: field(unit, "model").value,
      weight: number(unit, "weight"),
      guidance_start: number(unit, "guidance_start"),
      guidance_end: number(unit, "guidance_end"),
      control_mode: field(unit, "control_mode").value,
      resize_mode: number(unit, "resize_mode"),
      pixel_perfect: field(unit, "pixel_perfect").checked,
      processor_res: number(unit, "processor_res"),
      threshold_a: slider(unit, "threshold_a"),
      threshold_b: slider(unit, "threshold_b")
    };
  }

  function addTo(params) {
    var shown = units.filter(enabled);
    if (shown.length) params.controlnet = shown.map(unitParams);
    return params;
  }

  // ---- preview: the preprocessor's map, computed by a GPU worker ----------------------------

  function preview(unit) {
    var status = unit.querySelector(".cn-preview-status");
    var img = unit.querySelector(".cn-preview");
    var image = images[unit.dataset.index] || sourceImage();
    if (!image) { status.textContent = T.preview_needs_image; return; }
    var params = unitParams(unit);
    var body = {
      module: params.module,
      image: base64(image),
      processor_res: params.processor_res,
      threshold_a: params.threshold_a,
      threshold_b: params.threshold_b,
      pixel_perfect: params.pixel_perfect,
      width: Number(form.elements.width.value) || undefined,
      height: Number(form.elements.height.value) || undefined,
      resize_mode: params.resize_mode
    };
    var token = form.querySelector("input[name=csrfmiddlewaretoken]");
    status.textContent = T.preview_running;
    unit.setAttribute("aria-busy", "true");
    fetch(DATA.urls.controlnet_detect, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": token ? token.value : "" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json().catch(function () { return null; }).then(function (data) { return { ok: resp.ok, status: resp.status, data: data }; });
    }).catch(function () {
      return { ok: false, status: 0, data: { detail: T.network_error } };
    }).then(function (r) {
      unit.removeAttribute("aria-busy");
      if (r.ok && r.data && r.data.image) {
        img.src = "data:image/png;base64," + r.data.image;
        img.hidden = false;
        status.textContent = fmt(T.preview_done, { module: r.data.module, res: r.data.processor_res });
      } else {
        img.hidden = true;
        var data = r.data || {};
        status.textContent = data.message || data.detail || fmt(T.server_error, { status: r.status });
      }
    });
  }

  layout();
  filterModels();
  window.AtelierControlNet = {
    addTo: addTo,
    loading: function () { return keptLoading > 0; },
  };
})();
