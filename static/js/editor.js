// Step form nicety: ticking a dependency switches "Runs after" to the explicit list.
// Without it the form still works (the radio decides).
document.addEventListener("change", function (evt) {
  var box = evt.target;
  if (!box.matches || !box.matches('.step-form input[name="depends_on"]')) return;
  var explicit = box.form && box.form.querySelector('input[name="deps_mode"][value="explicit"]');
  if (explicit && box.checked) explicit.checked = true;
});
