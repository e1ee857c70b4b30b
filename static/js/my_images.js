/* "My images": the model filter applies on change, and Delete asks in place instead of opening
 * the confirmation page (which stays the no-JavaScript path). */
(function () {
  "use strict";
  var dataEl = document.getElementById("my-images-data");
  var T = dataEl ? JSON.parse(dataEl.textContent) : {};

  var filter = document.querySelector("select[data-autosubmit]");
  if (filter) filter.addEventListener("change", function () { filter.form.submit(); });

  var deleteForm = document.getElementById("delete-form");
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a.image-delete");
    if (!link || !deleteForm) return;
    event.preventDefault();
    if (window.confirm(T.confirm_delete)) {
      deleteForm.action = link.href;
      deleteForm.submit();
    }
  });
})();
