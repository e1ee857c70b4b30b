// The generator's token counter: "n/75" beside each prompt, from /api/v1/tokens/ as you type
// (styles and embeddings counted as A1111 does). Progressive enhancement: without it, nothing.
(function () {
  "use strict";
  var form = document.getElementById("generator-form");
  var url = form && form.getAttribute("data-tokens-url");
  if (!url) return;
  var fields = form.elements;
  var outputs = {
    prompt: document.getElementById("prompt-tokens"),
    negative_prompt: document.getElementById("negative-prompt-tokens")
  };
  var timer = null;
  var sent = 0;

  function styles() {
    if (!fields.styles) return [];
    return Array.prototype.filter.call(fields.styles.options, function (o) { return o.selected; })
      .map(function (o) { return o.value; });
  }

  function show(name, count) {
    var out = outputs[name];
    if (!out) return;
    out.textContent = count ? count.label : "";
    out.title = count && count.chunks.length > 1 ? form.getAttribute("data-tokens-per-chunk").replace("{chunks}", count.chunks.join(" + ")) : "";
    out.classList.toggle("over", !!count && count.chunks.length > 1);
  }

  function update() {
    var ticket = ++sent;
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": fields.csrfmiddlewaretoken.value },
      body: JSON.stringify({
        prompt: fields.prompt.value,
        negative_prompt: fields.negative_prompt.value,
        styles: styles(),
        steps: parseInt(fields.steps.value, 10) || 20
      })
    }).then(function (response) {
      return response.ok ? response.json() : null;
    }).then(function (counts) {
      if (ticket !== sent) return; // an older answer arriving late
      show("prompt", counts && counts.prompt);
      show("negative_prompt", counts && counts.negative_prompt);
    }).catch(function () { /* the counter is a hint: stay quiet */ });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(update, 250);
  }

  ["prompt", "negative_prompt", "styles", "steps"].forEach(function (name) {
    if (fields[name]) {
      fields[name].addEventListener("input", later);
      fields[name].addEventListener("change", later);
    }
  });
  update();
})();
