// Small progressive enhancements; every page works without them.
document.addEventListener("htmx:responseError", function (evt) {
  var box = document.getElementById("htmx-error");
  if (!box) {
    box = document.createElement("div");
    box.id = "htmx-error";
    box.className = "flash flash-error toast";
    box.setAttribute("role", "alert");
    document.body.appendChild(box);
  }
  var xhr = evt.detail.xhr;
  var msg = "Request failed (" + xhr.status + ").";
  try { var data = JSON.parse(xhr.responseText); if (data.error) msg = data.error; } catch (e) {}
  box.textContent = msg;
  setTimeout(function () { box.remove(); }, 6000);
});
