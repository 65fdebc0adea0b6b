// Behaviours the templates ask for with data- attributes, because the Content-Security-Policy
// runs no inline code (no onsubmit=, no htmx trigger filters, which htmx would have to eval).
(function () {
  // <form data-confirm="Delete X?">: ask before a plain (non-htmx) form is sent.
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) evt.preventDefault();
  }, true);

  // <section hx-trigger="every 5s" data-poll-hold="focus open-details">: skip a poll while the
  // reader is inside the region (focus) or has opened one of its <details> (open-details), so a
  // refresh never swaps away what they are reading or typing. The poll itself goes on.
  function held(elt) {
    var holds = (elt.getAttribute("data-poll-hold") || "").split(/\s+/);
    var active = document.activeElement;
    if (holds.indexOf("focus") >= 0 && active && active !== document.body && elt.contains(active)) return true;
    return holds.indexOf("open-details") >= 0 && !!elt.querySelector("details[open]");
  }

  document.addEventListener("htmx:beforeRequest", function (evt) {
    var elt = evt.detail && evt.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-poll-hold") && held(elt)) evt.preventDefault();
  });
})();
