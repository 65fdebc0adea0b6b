// Execution page: keep what the reader chose across the live block's swaps (every second while
// the execution runs): which logs are open, and a log scrolled to its end keeps following it.
// Without this script the page still works; logs simply re-open as the server renders them.
(function () {
  var chosen = {};      // details id -> open (what the reader toggled)
  var following = {};   // details id -> the log was scrolled to its end

  document.addEventListener("toggle", function (evt) {
    var el = evt.target;
    if (el.tagName === "DETAILS" && el.id && el.closest("#execution-live")) chosen[el.id] = el.open;
  }, true);

  document.addEventListener("htmx:beforeSwap", function (evt) {
    if (!evt.detail.target || evt.detail.target.id !== "execution-live") return;
    following = {};
    evt.detail.target.querySelectorAll("details.ex-log").forEach(function (d) {
      var pre = d.querySelector("pre.log");
      if (pre) following[d.id] = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    });
  });

  function restore() {
    var live = document.getElementById("execution-live");
    if (!live) return;
    live.querySelectorAll("details[id]").forEach(function (d) {
      if (Object.prototype.hasOwnProperty.call(chosen, d.id) && d.open !== chosen[d.id]) d.open = chosen[d.id];
    });
    live.querySelectorAll("details.ex-log").forEach(function (d) {
      var pre = d.querySelector("pre.log");
      if (pre && pre.dataset.follow === "true" && following[d.id] !== false) pre.scrollTop = pre.scrollHeight;
    });
  }

  document.addEventListener("htmx:afterSettle", restore);
  document.addEventListener("DOMContentLoaded", restore);
})();
