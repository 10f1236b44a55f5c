// Renders the OpenAPI document as a plain page: one section per endpoint, schemas as JSON.
"use strict";

function el(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

function resolve(schema, doc) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

fetch("/api/v1/openapi.json").then((r) => r.json()).then((doc) => {
  document.getElementById("description").textContent = doc.info.description;
  const container = document.getElementById("paths");
  container.replaceChildren();
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = el("section");
      section.append(el("h2", method.toUpperCase() + " " + path), el("p", op.summary + (op.security ? " — token required" : "")));
      if (op.parameters) {
        const list = el("ul");
        op.parameters.forEach((p) => list.append(el("li", p.name + " (" + p.in + "): " + (p.description || JSON.stringify(p.schema)))));
        section.append(el("h3", "Options"), list);
      }
      if (op.requestBody) section.append(el("p", "Body: " + Object.keys(op.requestBody.content).join(", ")));
      for (const [status, response] of Object.entries(op.responses)) {
        section.append(el("h3", status + " — " + response.description));
        const content = response.content && response.content["application/json"];
        if (content) section.append(el("pre", JSON.stringify(resolve(content.schema, doc), null, 1)));
      }
      container.append(section);
    }
  }
}).catch((e) => { document.getElementById("paths").textContent = "Cannot load the OpenAPI document: " + e.message; });
