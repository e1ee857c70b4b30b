// Gallery pages: like without reloading, copy the infotext, reveal a blurred mature image.
// Everything works without this script (forms post and redirect); it only saves round trips.
(function () {
  "use strict";

  function csrfToken(form) {
    var input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  document.querySelectorAll("form.like-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector(".like-button");
      button.disabled = true;
      fetch(form.action, {
        method: "POST",
        headers: { "Accept": "application/json", "X-CSRFToken": csrfToken(form) },
        credentials: "same-origin",
      })
        .then(function (response) { return response.json(); })
        .then(function (data) {
          if (data.error) { window.alert(data.error); return; }
          button.classList.toggle("liked", data.liked);
          button.setAttribute("aria-pressed", data.liked ? "true" : "false");
          form.querySelector(".like-count").textContent = data.likes_count;
        })
        .catch(function () { form.submit(); })
        .finally(function () { button.disabled = false; });
    });
  });

  document.querySelectorAll(".copy-button").forEach(function (button) {
    button.addEventListener("click", function () {
      var source = document.querySelector(button.dataset.copy);
      if (!source || !navigator.clipboard) { return; }
      navigator.clipboard.writeText(source.textContent).then(function () {
        var label = button.textContent;
        button.textContent = button.dataset.done;
        window.setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
  });

  document.querySelectorAll(".mature-blur .reveal").forEach(function (button) {
    button.addEventListener("click", function () {
      button.closest(".mature-blur").classList.remove("mature-blur");
      button.remove();
    });
  });
})();
