// Swagger UI (served by this server from the swagger-ui-bundle package: no CDN) over our OpenAPI
// document. "Authorize" takes the licence token as a Bearer token; "Try it out" calls this server.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  tryItOutEnabled: true,
  persistAuthorization: false,
  displayRequestDuration: true,
  validatorUrl: null,
});
