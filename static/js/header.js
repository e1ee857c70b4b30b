/* The header on a phone: the menu folds behind one button (without JavaScript it stays open). */
(function () {
  "use strict";
  var toggle = document.getElementById("menu-toggle");
  var menu = document.getElementById("main-menu");
  if (!toggle || !menu) return;
  document.documentElement.classList.add("has-menu-toggle");
  toggle.hidden = false;
  toggle.addEventListener("click", function () {
    var open = menu.classList.toggle("open");
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  });
})();
