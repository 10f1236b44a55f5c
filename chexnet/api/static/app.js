// The browser page: no framework, no CDN. Talks to the same REST API as PACS integrators.
"use strict";

const $ = (id) => document.getElementById(id);

function authHeaders() {
  return { Authorization: "Bearer " + $("token").value.trim() };
}

function showError(body, status) {
  const message = body && body.error ? body.error.message + " (" + body.error.code + ")" : "HTTP " + status;
  $("status").textContent = message;
  $("status").className = "error";
}

function showDemoBanner(isDemo) {
  $("demo-banner").hidden = !isDemo;
}

async function loadModels() {
  $("status").textContent = "Loading models…";
  $("status").className = "";
  const response = await fetch("/api/v1/models", { headers: authHeaders() });
  const body = await response.json();
  if (!response.ok) return showError(body, response.status);
  const select = $("model");
  select.replaceChildren();
  for (const model of body.models) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id + " " + model.version + (model.demo ? " (DEMO)" : "") + (model.licensed ? "" : " — not licensed");
    option.disabled = !model.licensed;
    option.dataset.demo = model.demo;
    select.append(option);
  }
  const first = [...select.options].find((o) => !o.disabled);
  if (first) select.value = first.value;
  showDemoBanner(first && first.dataset.demo === "true");
  $("status").textContent = body.models.length + " model(s) available.";
}

function renderResult(body) {
  showDemoBanner(body.model.demo);
  $("summary").textContent = "Model " + body.model.id + " " + body.model.version + " on " + body.model.engine + "/" +
    body.model.device + " · image " + body.image.format + " " + body.image.width + "×" + body.image.height +
    " · " + body.timing_ms.total.toFixed(0) + " ms" + (body.notice ? " · " + body.notice : "");
  renderTriage(body);
  const rows = body.findings.map((f) => {
    const tr = document.createElement("tr");
    tr.className = f.positive ? "positive" : "";
    const bar = document.createElement("span");
    bar.style.width = (f.probability * 100).toFixed(1) + "%";
    const cells = [f.name + (f.name_zh ? " " + f.name_zh : ""), f.probability.toFixed(3), bar, f.threshold.toFixed(2), f.positive ? "yes" : "no"];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 2) { td.className = "bar"; td.append(value); } else { td.textContent = value; }
      tr.append(td);
    });
    tr.dataset.code = f.code;
    return tr;
  });
  $("findings").querySelector("tbody").replaceChildren(...rows);
  const figures = body.heatmaps.map((h) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = "data:" + h.mime + ";base64," + h.data;
    img.alt = "heatmap " + h.code;
    const caption = document.createElement("figcaption");
    caption.textContent = h.code;
    figure.append(img, caption);
    return figure;
  });
  $("heatmap-list").replaceChildren(...figures);
  $("result").hidden = false;
}

// The worklist priority and which thresholds decided: as the PACS and the audit see them. From demo weights a
// priority is labelled as such: it orders nothing clinically.
function renderTriage(body) {
  const p = body.priority;
  const raised = p.findings.map((f) => f.code + " " + f.probability.toFixed(3) + " ≥ " + f.threshold).join(", ");
  $("triage").className = "priority-" + p.level;
  $("triage").dataset.level = p.level;
  $("triage").textContent = "Priority: " + p.level.toUpperCase() +
    (raised ? " (" + raised + ")" : p.rules ? "" : " (no priority rules set)") +
    (p.demo ? " · from DEMO weights, not a triage" : "") + " · thresholds: " + body.model.thresholds;
}

async function analyse(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("status").textContent = "Analysing " + file.name + "…";
  $("status").className = "";
  const form = new FormData();
  form.append("image", file);
  form.append("model", $("model").value);
  form.append("heatmaps", $("heatmaps").value);
  const response = await fetch("/api/v1/predict", { method: "POST", headers: authHeaders(), body: form });
  const body = await response.json();
  if (!response.ok) return showError(body, response.status);
  $("status").textContent = "Done (request " + body.request_id + ").";
  renderResult(body);
}

$("load-models").addEventListener("click", () => loadModels().catch((e) => showError(null, e.message)));
$("form").addEventListener("submit", (e) => analyse(e).catch((err) => showError(null, err.message)));
