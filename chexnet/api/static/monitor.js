// The monitoring page: no framework, no CDN. Draws GET /api/v1/monitor (token) with the vendored Chart.js.
"use strict";

const $ = (id) => document.getElementById(id);
let charts = [];

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function element(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(parent, size, config) {
  const box = element("div", { class: "chart " + size });
  const canvas = element("canvas");
  box.append(canvas);
  parent.append(box);
  charts.push(new Chart(canvas, config));
  return canvas;
}

function hourLabels(hours, window) {
  return hours.map((h) => (window === "day" ? h.slice(11, 16) : h.slice(5, 10) + " " + h.slice(11, 13) + "h"));
}

function shares(counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  return counts.map((n) => (total ? n / total : 0));
}

function bars(parent, title, values) {
  const labels = Object.keys(values);
  return chart(parent, "medium", {
    type: "bar",
    data: { labels, datasets: [{ label: title, data: labels.map((k) => values[k]), backgroundColor: "#4a78c2" }] },
    options: { indexAxis: "y", plugins: { title: { display: true, text: title }, legend: { display: false } },
      scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
}

function histogram(parent, cls, bins) {
  const labels = Array.from({ length: bins }, (_, i) => (i / bins).toFixed(2));
  const datasets = [{ type: "bar", label: "this window", data: shares(cls.histogram), backgroundColor: "#4a78c2" }];
  if (cls.reference) {
    datasets.push({ type: "line", label: "reference", data: shares(cls.reference), borderColor: "#c24a4a", pointRadius: 0, borderWidth: 2 });
  }
  const psi = cls.psi === null ? "PSI —" : "PSI " + cls.psi.toFixed(3);
  const canvas = chart(parent, "small", {
    type: "bar",
    data: { labels, datasets },
    options: {
      plugins: { title: { display: true, text: cls.code + " · " + psi, color: cls.psi !== null && cls.psi > 0.25 ? "#a00" : "#222" }, legend: { display: false } },
      scales: { x: { ticks: { maxTicksLimit: 5 } }, y: { beginAtZero: true } },
    },
  });
  canvas.dataset.code = cls.code;
}

function referenceText(ref) {
  if (ref.source === "site") return "reference: the site calibration set (site-thresholds.json)";
  if (!ref.from) return "reference: the first days of data (none yet)";
  return "reference: the first days of data, " + ref.from.slice(0, 10) + " to " + ref.to.slice(0, 10) +
    (ref.complete ? "" : " (still being gathered: no PSI until it is complete)");
}

function renderModel(model, body) {
  const section = element("section", { class: "model", id: "model-" + model.id });
  section.append(element("h2", {}, model.id + (model.version ? " " + model.version : "") + (model.loaded ? "" : " (not loaded now)")));
  if (model.demo) section.append(element("div", { class: "banner" }, "DEMO MODEL — NOT FOR DIAGNOSIS. Its scores mean nothing clinically."));
  const lat = model.latency_ms;
  const summary = element("p", { class: "summary", "data-predictions": model.predictions },
    model.predictions + " predictions in the " + body.window.name + " · " + referenceText(model.reference) +
    " · latency p50 " + (lat.p50 === null ? "—" : lat.p50 + " ms") + ", p99 " + (lat.p99 === null ? "—" : lat.p99 + " ms") + " (approximate, from histogram buckets)");
  section.append(summary);
  const labels = hourLabels(body.hours, body.window.name);

  section.append(element("h3", {}, "Score distribution against the reference, per class"));
  section.append(element("p", { class: "explain" }, "Bars: share of this window's scores in each of " + body.bins +
    " bins over [0, 1]; line: the reference's share. PSI (population stability index) above 0.1 is a moderate shift, above 0.25 a significant one."));
  const grid = element("div", { class: "charts histograms" });
  section.append(grid);
  model.classes.forEach((cls) => histogram(grid, cls, body.bins));

  section.append(element("h3", {}, "Over time"));
  const timeline = element("div", { class: "charts" });
  section.append(timeline);
  chart(timeline, "wide", {
    type: "line",
    data: { labels, datasets: model.classes.map((cls, i) => ({ label: cls.code, data: cls.positive_rate_by_hour, spanGaps: true,
      borderColor: "hsl(" + (i * 360 / model.classes.length) + ",60%,45%)", pointRadius: 1 })) },
    options: { plugins: { title: { display: true, text: "Positive rate per hour, UTC (share of predictions above the threshold)" },
      legend: { position: "right", labels: { boxWidth: 10 } } },
      scales: { y: { beginAtZero: true, max: 1 } } },
  });
  chart(timeline, "wide", {
    type: "line",
    data: { labels, datasets: [
      { label: "p50 ms", data: lat.p50_by_hour, borderColor: "#4a78c2", spanGaps: true },
      { label: "p99 ms", data: lat.p99_by_hour, borderColor: "#c24a4a", spanGaps: true },
      { label: "predictions", data: model.predictions_by_hour, type: "bar", yAxisID: "count", backgroundColor: "rgba(120,120,120,.3)" },
    ] },
    options: { plugins: { title: { display: true, text: "Latency per hour, UTC: decode to heatmap (approximate p50/p99) and predictions" } },
      scales: { y: { beginAtZero: true, title: { display: true, text: "ms" } }, count: { position: "right", beginAtZero: true, grid: { display: false } } } },
  });

  section.append(element("h3", {}, "Input mix, eligibility warnings and refusals"));
  const mix = element("div", { class: "charts" });
  section.append(mix);
  const names = { format: "File format", modality: "Modality (DICOM)", transfer_syntax: "Transfer syntax (DICOM)", view: "View position (DICOM)", size: "Source size (long side)" };
  Object.entries(names).forEach(([kind, title]) => bars(mix, title, model.input_mix[kind]));
  bars(mix, "Eligibility warnings", model.warnings);
  $("models").append(section);
}

function clear() {
  charts.forEach((c) => c.destroy());
  charts = [];
  $("models").replaceChildren();
  $("overview").hidden = true;
  $("empty").hidden = true;
}

async function load(event) {
  event.preventDefault();
  if (typeof Chart === "undefined") {
    return status("The chart library did not load (/monitor/chart.js): this installation was built without scripts/vendor-js.sh.", true);
  }
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;  // each chart fills its box (monitor.css)
  status("Loading…");
  const response = await fetch("/api/v1/monitor?window=" + $("window").value, { headers: { Authorization: "Bearer " + $("token").value.trim() } });
  const body = await response.json();
  clear();
  if (!response.ok) {
    return status(body && body.error ? body.error.message + " (" + body.error.code + ")" : "HTTP " + response.status, true);
  }
  const predictions = body.models.reduce((a, m) => a + m.predictions, 0);
  const refusals = Object.values(body.refusals.total).reduce((a, b) => a + b, 0);
  status(predictions + " predictions and " + refusals + " refused requests from " + body.window.from + " to " + body.window.to + ".");
  if (predictions === 0 && refusals === 0) {
    $("empty").textContent = "No predictions or refused requests have been recorded in this window yet. The charts appear once " +
      "the service has made predictions (the roll-up is written every few seconds).";
    $("empty").hidden = false;
    return;
  }
  $("overview").hidden = false;
  const labels = Object.keys(body.refusals.total);
  charts.push(new Chart($("refusals"), {
    type: "bar",
    data: { labels, datasets: [{ label: "refused", data: labels.map((k) => body.refusals.total[k]), backgroundColor: "#c24a4a" }] },
    options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
  }));
  body.models.filter((m) => m.predictions > 0 || m.loaded).forEach((m) => renderModel(m, body));
}

$("form").addEventListener("submit", (e) => load(e).catch((err) => status(err.message, true)));
