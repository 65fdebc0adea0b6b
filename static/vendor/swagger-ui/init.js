// Starts Swagger UI on the page's #swagger-ui element; the document's URL is its data-url
// (a file, not an inline script, so the CSP's script-src 'self' allows it).
window.addEventListener("DOMContentLoaded", function () {
  var el = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({ url: el.dataset.url, domNode: el, deepLinking: true });
});
