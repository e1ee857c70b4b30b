/* The header on a phone: the menu folds behind one button, filter boxes fold (without
 * JavaScript both stay open). */
(function () {
  "use strict";
  var toggle = document.getElementById("menu-toggle");
  var menu = document.getElementById("main-menu");
  // On a phone, filter boxes start folded unless a filter is in use.
  if (window.matchMedia && window.matchMedia("(max-width: 760px)").matches) {
    document.querySelectorAll("details.filters-toggle:not([data-active])").forEach(function (box) {
      box.open = false;
    });
  }
  if (!toggle || !menu) return;
  document.documentElement.classList.add("has-menu-toggle");
  toggle.hidden = false;
  toggle.addEventListener("click", function () {
    var open = menu.classList.toggle("open");
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });
})();
