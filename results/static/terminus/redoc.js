"use strict";
// Starts Redoc on /api/redoc/ from a file: the Content-Security-Policy runs no inline script.
(function () {
  const container = document.getElementById("redoc-container");
  Redoc.init(container.dataset.schemaUrl, { expandResponses: "200,202", pathInMiddlePanel: true }, container);
})();
