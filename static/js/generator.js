/* The generator page: enhances the server-rendered form.
 *
 * Submits jobs with fetch to the REST API, follows them over the /ws/jobs/ websocket and falls
 * back to polling GET /api/v1/jobs/{id}/ while the socket is closed (reconnecting with backoff).
 * Every user-facing string comes from the page's JSON data block, translated by Django.
 */
(function () {
  "use strict";

  var dataEl = document.getElementById("generator-data");
  var form = document.getElementById("generator-form");
  if (!dataEl || !form) return;
  var DATA = JSON.parse(dataEl.textContent);
  var T = DATA.strings;
  var URLS = DATA.urls;

  var fields = form.elements;
  var jobsEl = document.getElementById("jobs");
  var resultsEl = document.getElementById("results");
  var priceEl = document.getElementById("price");
  var errorsEl = document.getElementById("form-errors");
  var submitButton = document.getElementById("generate-button");
  var jobTemplate = document.getElementById("job-template");
  var resultTemplate = document.getElementById("result-template");

  var POLL_MS = 1500;
  var SAFETY_POLL_MS = 10000; // even with the socket open: a dropped message never leaves a stale panel
  var TERMINAL = { succeeded: true, failed: true, cancelled: true };
  var RANK = { queued: 0, running: 1, succeeded: 2, failed: 2, cancelled: 2 };
  var MAX_PANELS = 6;

  var jobs = new Map(); // job id -> {id, status, steps, panel, lastPoll}
  var imageParams = new Map(); // image id -> {params, seed, width, height}
  var initImage = null; // data: URI of the img2img source
  var lastSeed = DATA.last_seed;

  // ---- small helpers ----------------------------------------------------------------------

  function fmt(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (_m, key) {
      return values[key] === undefined || values[key] === null ? "" : String(values[key]);
    });
  }

  function csrfToken() {
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function newKey() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  // Resolves to {ok, status, data}; never rejects, so no promise error reaches the console.
  function api(method, url, body, headers) {
    var options = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    if (method !== "GET") options.headers["X-CSRFToken"] = csrfToken();
    if (headers) Object.keys(headers).forEach(function (k) { options.headers[k] = headers[k]; });
    return fetch(url, options).then(function (resp) {
      return resp.json().catch(function () { return null; }).then(function (data) {
        return { ok: resp.ok, status: resp.status, data: data };
      });
    }).catch(function () {
      return { ok: false, status: 0, data: { detail: T.network_error } };
    });
  }

  function jobUrl(id) { return URLS.job.replace(DATA.placeholder_id, id); }
  function cancelUrl(id) { return URLS.job_cancel.replace(DATA.placeholder_id, id); }

  // API errors: {"field": "steps", "detail": "..."}; DRF's own {"name": ["message"]} or
  // {"detail": "..."} too. One line each: "Label: message".
  function errorLines(data, status) {
    if (status >= 500) return [fmt(T.server_error, { status: status })];
    if (!data) return [T.unknown_error];
    if (typeof data === "string") return [data];
    if (typeof data.message === "string") return [data.message]; // already worded for people
    if (typeof data.field === "string" && data.detail !== undefined) {
      var name = DATA.field_labels[data.field] || data.field;
      return [name + ": " + data.detail];
    }
    var lines = [];
    Object.keys(data).forEach(function (key) {
      var value = data[key];
      var text = Array.isArray(value) ? value.map(function (v) {
        return typeof v === "string" ? v : JSON.stringify(v);
      }).join(" ") : (typeof value === "string" ? value : JSON.stringify(value));
      var label = DATA.field_labels[key];
      lines.push(key === "detail" || key === "non_field_errors" ? text : (label || key) + ": " + text);
    });
    return lines.length ? lines : [T.unknown_error];
  }

  function showErrors(lines) {
    errorsEl.textContent = "";
    if (!lines || !lines.length) { errorsEl.hidden = true; return; }
    lines.forEach(function (line) {
      var p = document.createElement("p");
      p.className = "error";
      p.textContent = line;
      errorsEl.appendChild(p);
    });
    errorsEl.hidden = false;
  }

  function formatEta(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    seconds = Math.max(0, Math.round(Number(seconds)));
    if (seconds < 60) return fmt(T.eta_seconds, { s: seconds });
    return fmt(T.eta_minutes, { m: Math.floor(seconds / 60), s: seconds % 60 });
  }

  function toInt(value) { var n = parseInt(value, 10); return isNaN(n) ? null : n; }
  function toFloat(value) { var n = parseFloat(value); return isNaN(n) ? null : n; }
  // A number field as typed: an empty or unreadable one goes as text, so the server names it
  // instead of quietly using a default.
  function intField(name) { var n = toInt(fields[name].value); return n === null ? fields[name].value : n; }
  function floatField(name) { var n = toFloat(fields[name].value); return n === null ? fields[name].value : n; }

  // ---- the form <-> API parameters ----------------------------------------------------------

  function selectedStyles(first) {
    if (!first) return [];
    return Array.prototype.filter.call(fields.styles.options, function (o) { return o.selected; })
      .map(function (o) { return o.value; });
  }

  function collectParams() {
    var params = {
      prompt: fields.prompt.value,
      negative_prompt: fields.negative_prompt.value,
      checkpoint: fields.checkpoint.value,
      vae: fields.vae.value || null,
      sampler: fields.sampler.value,
      scheduler: fields.scheduler.value,
      steps: intField("steps"),
      cfg_scale: floatField("cfg_scale"),
      width: intField("width"),
      height: intField("height"),
      seed: intField("seed"),
      batch_size: intField("batch_size"),
      n_iter: intField("n_iter"),
      clip_skip: intField("clip_skip"),
      subseed: intField("subseed"),
      subseed_strength: floatField("subseed_strength"),
      seed_resize_from_w: intField("seed_resize_from_w"),
      seed_resize_from_h: intField("seed_resize_from_h"),
      tiling: fields.tiling.checked,
      restore_faces: fields.restore_faces.checked,
      face_restoration_model: fields.face_restoration_model.value,
      code_former_weight: floatField("code_former_weight"),
      styles: selectedStyles(fields.styles.value),
      mode: initImage ? "img2img" : "txt2img",
      hires: null
    };
    if (initImage) {
      params.init_image = initImage.slice(initImage.indexOf(",") + 1);
      params.denoising_strength = toFloat(fields.denoising_strength.value);
      params.resize_mode = toInt(fields.resize_mode.value);
      if (window.AtelierInpaint) window.AtelierInpaint.addTo(params); // mask_editor.js
    } else if (fields.hires_enabled.checked) {
      params.hires = {
        scale: toFloat(fields.hires_scale.value),
        resize_x: toInt(fields.hires_resize_x.value),
        resize_y: toInt(fields.hires_resize_y.value),
        upscaler: fields.hires_upscaler.value,
        second_pass_steps: toInt(fields.hires_second_pass_steps.value),
        denoising_strength: toFloat(fields.hires_denoising_strength.value)
      };
    }
    if (window.AtelierControlNet) window.AtelierControlNet.addTo(params); // controlnet.js
    return params;
  }

  function setField(name, value) {
    var field = fields[name];
    if (!field || value === undefined || value === null) return;
    if (field.tagName === "SELECT") {
      var found = Array.prototype.some.call(field.options, function (o) { return o.value === String(value); });
      if (found) field.value = String(value);
    } else {
      field.value = String(value);
    }
  }

  function applyParams(params, seed) {
    ["prompt", "negative_prompt", "checkpoint", "sampler", "scheduler", "steps", "cfg_scale",
      "width", "height", "batch_size", "n_iter", "clip_skip", "denoising_strength", "resize_mode",
      "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
      "face_restoration_model", "code_former_weight"]
      .forEach(function (name) { setField(name, params[name]); });
    fields.tiling.checked = !!params.tiling;
    fields.restore_faces.checked = !!params.restore_faces;
    setField("vae", params.vae || "");
    setField("seed", seed !== undefined && seed !== null ? seed : params.seed);
    var hires = params.hires;
    fields.hires_enabled.checked = !!hires;
    if (hires) {
      setField("hires_scale", hires.scale);
      setField("hires_resize_x", hires.resize_x);
      setField("hires_resize_y", hires.resize_y);
      setField("hires_upscaler", hires.upscaler);
      setField("hires_second_pass_steps", hires.second_pass_steps);
      setField("hires_denoising_strength", hires.denoising_strength);
      document.getElementById("hires-options").open = true;
    }
    syncSizePreset();
    showCard("model-cards", fields.checkpoint.value);
    schedulePrice();
    form.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  // ---- size presets, seed, LoRA, img2img -------------------------------------------------------

  var presetSelect = fields.size_preset;
  function syncSizePreset() {
    var value = fields.width.value + "x" + fields.height.value;
    var match = Array.prototype.some.call(presetSelect.options, function (o) { return o.value === value; });
    presetSelect.value = match ? value : "custom";
  }
  presetSelect.addEventListener("change", function () {
    if (presetSelect.value === "custom") { fields.width.focus(); return; }
    var parts = presetSelect.value.split("x");
    fields.width.value = parts[0];
    fields.height.value = parts[1];
    schedulePrice();
  });
  fields.width.addEventListener("input", syncSizePreset);
  fields.height.addEventListener("input", syncSizePreset);
  document.getElementById("swap-size").addEventListener("click", function () {
    var w = fields.width.value;
    fields.width.value = fields.height.value;
    fields.height.value = w;
    syncSizePreset();
    schedulePrice();
  });

  document.getElementById("seed-random").addEventListener("click", function () {
    fields.seed.value = "-1";
    schedulePrice();
  });
  var reuseSeedButton = document.getElementById("seed-reuse");
  function updateReuseSeed() { reuseSeedButton.disabled = lastSeed === null || lastSeed === undefined; }
  reuseSeedButton.addEventListener("click", function () {
    if (lastSeed !== null && lastSeed !== undefined) fields.seed.value = String(lastSeed);
    schedulePrice();
  });
  updateReuseSeed();

  var loraButton = document.getElementById("lora-insert");
  if (loraButton) {
    loraButton.addEventListener("click", function () {
      var name = fields.lora_name.value;
      if (!name) return;
      var weight = toFloat(fields.lora_weight.value);
      var tag = "<lora:" + name + ":" + (weight === null ? 0.8 : weight) + ">";
      var prompt = fields.prompt;
      var start = prompt.selectionStart === undefined ? prompt.value.length : prompt.selectionStart;
      var end = prompt.selectionEnd === undefined ? start : prompt.selectionEnd;
      var before = prompt.value.slice(0, start);
      var after = prompt.value.slice(end);
      var pad = before && !/\s$/.test(before) ? " " : "";
      prompt.value = before + pad + tag + after;
      var caret = (before + pad + tag).length;
      prompt.focus();
      prompt.setSelectionRange(caret, caret);
      schedulePrice();
    });
  }

  var initPreview = document.getElementById("init-preview");
  var initClear = document.getElementById("init-clear");
  var img2imgBox = document.getElementById("img2img-options");
  var modeLabel = document.getElementById("mode-label");
  function setInitImage(dataUri) {
    initImage = dataUri;
    if (dataUri) {
      initPreview.src = dataUri;
      initPreview.hidden = false;
      initClear.hidden = false;
      img2imgBox.open = true;
    } else {
      initPreview.removeAttribute("src");
      initPreview.hidden = true;
      initClear.hidden = true;
      fields.init_image.value = "";
    }
    modeLabel.textContent = dataUri ? T.mode_img2img : T.mode_txt2img;
    if (typeof measureSource === "function") measureSource(dataUri);
    schedulePrice();
  }
  fields.init_image.addEventListener("change", function () {
    var file = fields.init_image.files && fields.init_image.files[0];
    if (!file) { setInitImage(null); return; }
    var reader = new FileReader();
    reader.onload = function () { setInitImage(String(reader.result)); };
    reader.onerror = function () { showErrors([T.image_read_error]); };
    reader.readAsDataURL(file);
  });
  initClear.addEventListener("click", function () { setInitImage(null); });

  function sendToImg2img(url, width, height) {
    fetch(url, { credentials: "same-origin" }).then(function (resp) {
      if (!resp.ok) throw new Error(String(resp.status));
      return resp.blob();
    }).then(function (blob) {
      var reader = new FileReader();
      reader.onload = function () {
        setInitImage(String(reader.result));
        if (width && height) { fields.width.value = width; fields.height.value = height; syncSizePreset(); }
        img2imgBox.scrollIntoView({ behavior: "smooth", block: "center" });
      };
      reader.readAsDataURL(blob);
    }).catch(function () { showErrors([T.image_read_error]); });
  }

  // ---- model and LoRA cards: preview, description, trigger words, cost ----------------------

  function showCard(boxId, name) {
    var box = document.getElementById(boxId);
    if (!box) return;
    box.querySelectorAll(".catalogue-card").forEach(function (card) { card.hidden = card.dataset.name !== name; });
  }
  fields.checkpoint.addEventListener("change", function () { showCard("model-cards", fields.checkpoint.value); });
  if (fields.lora_name) {
    fields.lora_name.addEventListener("change", function () { showCard("lora-cards", fields.lora_name.value); });
  }
  form.addEventListener("click", function (event) {
    var words = event.target.closest(".trigger-words");
    if (!words) return;
    var prompt = fields.prompt;
    if (prompt.value.indexOf(words.textContent) === -1) {
      prompt.value = prompt.value ? prompt.value.replace(/\s*$/, ", ") + words.textContent : words.textContent;
      schedulePrice();
    }
    prompt.focus();
  });

  // The model choice is remembered server-side, per user.
  fields.checkpoint.addEventListener("change", function () {
    api("POST", URLS.default_model, { checkpoint: fields.checkpoint.value });
  });

  // ---- live price ------------------------------------------------------------------------------

  var priceTimer = null;
  var priceSeq = 0;
  function schedulePrice() {
    if (priceTimer) clearTimeout(priceTimer);
    priceTimer = setTimeout(updatePrice, 400);
  }
  function updatePrice() {
    priceTimer = null;
    // A reused job's control image is still on its way: controlnet.js asks again once it is.
    if (window.AtelierControlNet && window.AtelierControlNet.loading()) return;
    var seq = ++priceSeq;
    priceEl.classList.add("pending");
    api("POST", URLS.quote, collectParams()).then(function (r) {
      if (seq !== priceSeq) return; // a newer quote is on its way
      priceEl.classList.remove("pending");
      if (r.ok && r.data) {
        priceEl.classList.remove("invalid");
        priceEl.textContent = fmt(T.price, { price: r.data.price });
        lastPrice = r.data.price;
        showBalanceWarning();
        showErrors(null);
      } else {
        lastPrice = null;
        showBalanceWarning();
        // The reason shows once, in the error box; the price line only says there is none.
        priceEl.classList.add("invalid");
        priceEl.textContent = T.no_price;
        showErrors(errorLines(r.data, r.status));
      }
    });
  }
  form.addEventListener("input", schedulePrice);
  form.addEventListener("change", schedulePrice);

  // ---- balance: in the header, and a warning before Generate when the price exceeds it ------

  var lastPrice = null;
  var priceWarning = document.getElementById("price-warning");
  var headerBalance = document.getElementById("header-balance");
  function showBalanceWarning() {
    var over = lastPrice !== null && DATA.balance !== null && Number(lastPrice) > Number(DATA.balance);
    priceEl.classList.toggle("over-balance", over);
    priceWarning.hidden = !over;
    if (over) {
      priceWarning.querySelector(".price-warning-text").textContent =
        fmt(T.over_balance, { price: lastPrice, balance: DATA.balance });
    }
  }
  function setBalance(balance) {
    if (balance === undefined || balance === null) return;
    DATA.balance = String(balance);
    if (headerBalance) {
      headerBalance.textContent = fmt(T.balance, { balance: DATA.balance });
      headerBalance.dataset.balance = DATA.balance;
    }
    showBalanceWarning();
  }
  function refreshBalance() {
    api("GET", URLS.me).then(function (r) { if (r.ok && r.data) setBalance(r.data.balance); });
  }

  // ---- prompt history: search, and a click puts the prompt back ------------------------------

  var promptHistory = document.getElementById("prompt-history");
  if (promptHistory) {
    var search = document.getElementById("prompt-history-search");
    search.addEventListener("input", function () {
      var needle = search.value.trim().toLowerCase();
      promptHistory.querySelectorAll(".prompt-history-item").forEach(function (item) {
        item.parentNode.hidden = needle !== "" && item.textContent.toLowerCase().indexOf(needle) === -1;
      });
    });
    search.addEventListener("keydown", function (event) { if (event.key === "Enter") event.preventDefault(); });
    promptHistory.addEventListener("click", function (event) {
      var item = event.target.closest(".prompt-history-item");
      if (!item) return;
      fields.prompt.value = item.textContent;
      promptHistory.open = false;
      fields.prompt.focus();
      schedulePrice();
    });
  }

  // ---- habits: Ctrl/Cmd+Enter generates; the hires output size; the source image's size ------

  form.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    event.preventDefault();
    if (!submitButton.disabled) {
      if (typeof form.requestSubmit === "function") form.requestSubmit(submitButton);
      else submitButton.click();
    }
  });

  var hiresSizeEl = document.getElementById("hires-size");
  function showHiresSize() {
    var w = toInt(fields.width.value), h = toInt(fields.height.value);
    var scale = toFloat(fields.hires_scale.value);
    if (!fields.hires_enabled.checked || initImage || !w || !h || !scale) { hiresSizeEl.textContent = ""; return; }
    // As the server computes it: A1111 rounds the target down to a multiple of 8.
    hiresSizeEl.textContent = fmt(T.hires_size, {
      width: w, height: h,
      out_width: Math.floor(w * scale / 8) * 8, out_height: Math.floor(h * scale / 8) * 8
    });
  }
  form.addEventListener("input", showHiresSize);
  form.addEventListener("change", showHiresSize);

  var useSourceSize = document.getElementById("use-source-size");
  var sourceSize = null;
  useSourceSize.addEventListener("click", function () {
    if (!sourceSize) return;
    var max = Number(fields.width.max) || 2048;
    var fit = Math.min(1, max / Math.max(sourceSize.w, sourceSize.h));
    fields.width.value = Math.max(64, Math.round(sourceSize.w * fit / 8) * 8);
    fields.height.value = Math.max(64, Math.round(sourceSize.h * fit / 8) * 8);
    syncSizePreset();
    schedulePrice();
  });
  function measureSource(dataUri) {
    sourceSize = null;
    useSourceSize.hidden = true;
    if (!dataUri) return;
    var probe = new Image();
    probe.onload = function () {
      sourceSize = { w: probe.naturalWidth, h: probe.naturalHeight };
      useSourceSize.textContent = fmt(T.use_source_size, { width: sourceSize.w, height: sourceSize.h });
      useSourceSize.hidden = false;
    };
    probe.src = dataUri;
  }

  // ---- submit ----------------------------------------------------------------------------------

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    submitButton.disabled = true;
    showErrors(null);
    api("POST", URLS.jobs, collectParams(), { "Idempotency-Key": newKey() }).then(function (r) {
      submitButton.disabled = false;
      if (r.ok && r.data && r.data.id) {
        applyJob(r.data);
        refreshBalance(); // the hold came off it
      } else {
        showErrors(errorLines(r.data, r.status));
      }
    });
  });

  // ---- job panels ------------------------------------------------------------------------------

  function trackJob(id) {
    var job = jobs.get(id);
    if (job) return job;
    var node = jobTemplate.content.firstElementChild.cloneNode(true);
    node.dataset.jobId = id;
    node.querySelector(".job-stop").addEventListener("click", function () { stopJob(id); });
    jobsEl.prepend(node);
    jobsEl.hidden = false;
    job = { id: id, status: null, steps: null, panel: node, lastPoll: 0 };
    jobs.set(id, job);
    // Keep the list short: drop the oldest finished panels.
    var panels = jobsEl.querySelectorAll(".job");
    for (var i = panels.length - 1; i >= MAX_PANELS; i--) {
      var old = jobs.get(panels[i].dataset.jobId);
      if (old && TERMINAL[old.status]) { jobs.delete(old.id); panels[i].remove(); }
    }
    return job;
  }

  function setStatus(job, status) {
    // Late or out-of-order news (a poll answered after a websocket event) never moves a job back.
    if (job.status && RANK[status] < RANK[job.status]) return false;
    if (TERMINAL[job.status]) return false; // a finished job stays finished
    job.status = status;
    var panel = job.panel;
    panel.dataset.status = status;
    panel.querySelector(".job-status").textContent = T["status_" + status] || status;
    var stop = panel.querySelector(".job-stop");
    stop.hidden = !!TERMINAL[status];
    if (TERMINAL[status]) {
      panel.querySelector(".job-info").textContent = "";
      showSummary(job);
    }
    updateTitle();
    return true;
  }

  // Done, Failed or Cancelled: what it cost and how long it ran, and the balance now.
  function showSummary(job) {
    api("GET", URLS.job_summary.replace(DATA.placeholder_id, job.id)).then(function (r) {
      if (!r.ok || !r.data) return;
      var line = job.panel.querySelector(".job-summary");
      line.querySelector(".job-summary-text").textContent = fmt(T.job_summary, r.data);
      line.querySelector(".job-link").href = r.data.url;
      line.hidden = false;
      setBalance(r.data.balance);
    });
  }

  // On a phone the panels scroll away: a sticky bar keeps the newest unfinished job in sight.
  var statusBar = document.getElementById("status-bar");
  function updateStatusBar() {
    var active = null;
    jobs.forEach(function (job) { if (!TERMINAL[job.status] && job.status) active = job; }); // the newest
    statusBar.hidden = !active;
    if (!active) return;
    var panel = active.panel;
    var info = panel.querySelector(".job-info").textContent;
    statusBar.querySelector(".status-text").textContent =
      panel.querySelector(".job-status").textContent + (info ? " · " + info : "");
    var bar = panel.querySelector("progress");
    var mini = statusBar.querySelector("progress");
    mini.max = bar.max;
    mini.value = bar.value;
    var preview = panel.querySelector(".job-preview");
    var thumb = statusBar.querySelector(".status-preview");
    thumb.hidden = preview.hidden || !preview.src;
    if (!thumb.hidden) thumb.src = preview.src;
  }

  // The tab title follows the work: "[42%] Generate · Atelier".
  var baseTitle = document.title;
  function updateTitle() {
    var done = 0, total = 0, waiting = false, running = false;
    jobs.forEach(function (job) {
      if (job.status === "running") {
        running = true;
        var bar = job.panel.querySelector("progress");
        done += Number(bar.value) || 0;
        total += Number(bar.max) || 0;
      } else if (job.status === "queued") {
        waiting = true;
      }
    });
    updateStatusBar();
    if (running) document.title = "[" + (total ? Math.floor(100 * done / total) : 0) + "%] " + baseTitle;
    else if (waiting) document.title = "[" + T.status_queued + "] " + baseTitle;
    else document.title = baseTitle;
  }

  function setProgress(job, step, steps) {
    if (!steps) return;
    var bar = job.panel.querySelector("progress");
    if (Number(bar.max) === steps && step < Number(bar.value)) return; // an older report
    bar.max = steps;
    bar.value = Math.min(step, steps);
    updateTitle();
  }

  function setInfo(job, text) {
    job.panel.querySelector(".job-info").textContent = text;
    updateTitle();
  }

  function stepInfo(step, steps, eta) {
    var text = fmt(T.step, { step: step, steps: steps });
    return eta !== null && eta !== undefined ? text + " · " + formatEta(eta) : text;
  }

  function queuedInfo(position, eta) {
    var parts = [];
    if (position) parts.push(fmt(T.position, { position: position }));
    if (eta !== null && eta !== undefined) parts.push(formatEta(eta));
    return parts.join(" · ");
  }

  // A job as the REST API returns it (submit response, polling).
  function applyJob(data) {
    var job = trackJob(data.id);
    if (data.params && !job.params) {
      job.params = data.params;
      job.panel.querySelector(".job-title").textContent = fmt(T.job_title, {
        prompt: data.params.prompt || "…", width: data.params.width, height: data.params.height,
        steps: data.params.steps, model: data.checkpoint || data.params.checkpoint
      });
    }
    if (data.total_steps) job.steps = data.total_steps;
    else if (!job.steps && data.params) job.steps = data.params.steps * (data.params.n_iter || 1);
    var status = data.status;
    if (status === "queued") {
      if (!setStatus(job, "queued")) return;
      if (data.cancel_requested) {  // handed to a worker: its report ends the job
        job.stopping = true;
        job.panel.querySelector(".job-stop").disabled = true;
        setInfo(job, T.stopping);
      } else {
        setInfo(job, queuedInfo(data.position, data.eta));
      }
    } else if (status === "running") {
      if (!setStatus(job, "running")) return;
      if (data.cancel_requested) {
        job.panel.querySelector(".job-stop").disabled = true;
        setInfo(job, T.stopping);
      } else if (data.steps_done) {
        setProgress(job, data.steps_done, job.steps);
        setInfo(job, stepInfo(data.steps_done, job.steps, data.eta));
      } else if (!job.panel.querySelector(".job-info").textContent) {
        setInfo(job, T.starting);
      }
    } else if (status === "succeeded") {
      finishSucceeded(job, data);
    } else if (status === "failed") {
      if (setStatus(job, "failed")) showJobError(job, data.error);
    } else if (status === "cancelled") {
      setStatus(job, "cancelled");
    }
  }

  function finishSucceeded(job, data) {
    if (!setStatus(job, "succeeded")) return;
    var bar = job.panel.querySelector("progress");
    bar.value = bar.max;
    var images = data.images || [];
    images.slice().reverse().forEach(function (image) { addResult(image, data.params || job.params); });
    if (images.length) {
      lastSeed = images[0].seed;
      updateReuseSeed();
    }
  }

  function showJobError(job, message) {
    var p = job.panel.querySelector(".job-error");
    p.textContent = message || T.unknown_error;
    p.hidden = false;
  }

  // A websocket event.
  function applyEvent(msg) {
    if (!msg || !msg.job_id) return;
    var job = trackJob(msg.job_id);
    switch (msg.type) {
      case "job.queued":
        if (setStatus(job, "queued") && !job.stopping) setInfo(job, queuedInfo(msg.position, msg.eta));
        break;
      case "job.started":
        if (!setStatus(job, "running")) break;
        if (msg.steps) {
          job.steps = msg.steps;
          setProgress(job, msg.steps_done || 0, msg.steps);
        }
        setInfo(job, msg.steps_done ? stepInfo(msg.steps_done, msg.steps, msg.eta) : T.starting);
        break;
      case "job.progress":
        if (job.status !== "running" && !setStatus(job, "running")) break;
        setProgress(job, msg.step, msg.steps);
        if (!job.panel.querySelector(".job-stop").disabled) setInfo(job, stepInfo(msg.step, msg.steps, msg.eta));
        if (msg.preview) {
          var preview = job.panel.querySelector(".job-preview");
          preview.src = msg.preview;
          preview.hidden = false;
        }
        break;
      case "job.succeeded":
        // The REST answer carries the parameters too (for "Reuse parameters").
        pollJob(job);
        break;
      case "job.failed":
        if (setStatus(job, "failed")) showJobError(job, msg.error);
        break;
      case "job.cancelled":
        setStatus(job, "cancelled");
        break;
    }
  }

  function stopJob(id) {
    var job = jobs.get(id);
    if (!job || TERMINAL[job.status]) return;
    var stop = job.panel.querySelector(".job-stop");
    stop.disabled = true;
    job.stopping = true;
    setInfo(job, T.stopping);
    api("POST", cancelUrl(id)).then(function (r) {
      if (r.ok && r.data && r.data.status) {
        applyJob(r.data);
      } else if (!r.ok) {
        job.stopping = false;
        stop.disabled = false;
        showJobError(job, errorLines(r.data, r.status).join(" "));
      }
    });
  }

  function pollJob(job) {
    job.lastPoll = Date.now();
    return api("GET", jobUrl(job.id)).then(function (r) {
      if (r.ok && r.data) applyJob(r.data);
    });
  }

  // ---- results ---------------------------------------------------------------------------------

  function addResult(image, params) {
    if (resultsEl.querySelector('[data-image-id="' + image.id + '"]')) return;
    var node = resultTemplate.content.firstElementChild.cloneNode(true);
    fillResult(node, image);
    imageParams.set(String(image.id), { params: params, seed: image.seed, width: image.width, height: image.height, url: image.url });
    resultsEl.prepend(node);
    var empty = document.getElementById("results-empty");
    if (empty) empty.remove();
  }

  function fillResult(node, image) {
    node.dataset.imageId = image.id;
    node.dataset.url = image.url;
    var img = node.querySelector("img");
    img.src = image.thumbnail_url || image.url;
    img.alt = fmt(T.image_alt, { seed: image.seed });
    node.querySelector(".result-open").href = image.url;
    var download = node.querySelector(".result-download");
    download.href = image.url;
    download.setAttribute("download", "atelier-" + image.seed + ".png");
    node.querySelector(".result-seed").textContent = fmt(T.seed, { seed: image.seed });
    node.querySelector(".result-reuse").href = URLS.reuse.replace(DATA.placeholder_id, image.id);
    node.querySelector(".result-img2img").href = URLS.send_img2img.replace(DATA.placeholder_id, image.id);
    var d = node.dataset;
    d.viewerSrc = image.url;
    d.viewerInfo = image.infotext || "";
    d.viewerTitle = fmt(T.seed, { seed: image.seed }) + " · " + image.width + "×" + image.height;
    d.viewerReuse = URLS.reuse.replace(DATA.placeholder_id, image.id);
    d.viewerImg2img = URLS.send_img2img.replace(DATA.placeholder_id, image.id);
    d.viewerDetail = URLS.image_detail.replace(DATA.placeholder_id, image.id);
    d.viewerDelete = URLS.image_delete.replace(DATA.placeholder_id, image.id);
    d.viewerDownload = "atelier-" + image.seed + ".png";
    // The publish controls come with the placeholder id in their links and data.
    node.querySelectorAll("[href], [action], [data-image-id], [data-publish-url]").forEach(function (el) {
      ["href", "action", "data-image-id", "data-publish-url"].forEach(function (name) {
        var value = el.getAttribute(name);
        if (value && value.indexOf(DATA.placeholder_id) !== -1) el.setAttribute(name, value.split(DATA.placeholder_id).join(image.id));
      });
    });
  }

  resultsEl.addEventListener("click", function (event) {
    var link = event.target.closest("a.result-reuse, a.result-img2img");
    if (!link) return;
    var figure = link.closest("[data-image-id]");
    var known = imageParams.get(figure.dataset.imageId);
    // Unknown here, or with ControlNet units (their kept images): follow the link, the server
    // pre-fills the form.
    if (!known || (link.classList.contains("result-reuse") && ((known.params && known.params.controlnet) || []).length)) return;
    event.preventDefault();
    if (link.classList.contains("result-reuse")) {
      setInitImage(null);
      applyParams(known.params, known.seed);
    } else {
      sendToImg2img(known.url, known.width, known.height);
    }
  });

  (DATA.recent || []).forEach(function (item) {
    imageParams.set(String(item.image.id), {
      params: item.params, seed: item.image.seed, width: item.image.width,
      height: item.image.height, url: item.image.url
    });
  });

  // ---- websocket with reconnect, polling while it is closed ----------------------------------

  var socket = null;
  var socketOpen = false;
  var reconnectDelay = 1000;

  function connect() {
    if (!("WebSocket" in window)) return;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + URLS.ws);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    socket.onopen = function () {
      socketOpen = true;
      reconnectDelay = 1000;
      document.body.dataset.live = "socket";
    };
    socket.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      applyEvent(msg);
    };
    socket.onclose = function () {
      socket = null;
      socketOpen = false;
      document.body.dataset.live = "polling";
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    var delay = reconnectDelay;
    reconnectDelay = Math.min(reconnectDelay * 2, 30000);
    setTimeout(connect, delay + Math.random() * 300);
  }

  setInterval(function () {
    var now = Date.now();
    var every = socketOpen ? SAFETY_POLL_MS : POLL_MS;
    jobs.forEach(function (job) {
      if (!TERMINAL[job.status] && now - job.lastPoll >= every) pollJob(job);
    });
  }, 500);

  // ---- start -----------------------------------------------------------------------------------

  document.body.dataset.live = "polling";
  syncSizePreset();
  setInitImage(null); // also asks for the first price
  showHiresSize();
  if (DATA.init_image_url) sendToImg2img(DATA.init_image_url, null, null);
  (DATA.unfinished || []).forEach(applyJob);
  connect();
  form.classList.add("enhanced");
})();
