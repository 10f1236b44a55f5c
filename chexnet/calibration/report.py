"""The calibration report: one HTML file a clinician can read (the PNG ROC curves embedded), drawn with
matplotlib's Agg renderer on figures of their own (no pyplot, no display,
no network). It says DEMO at its top and bottom and on every curve where the bundle is a demo."""

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure  # a Figure of its own renders with Agg: no pyplot, no global backend

DEMO_BANNER = "DEMO MODEL — NOT FOR DIAGNOSIS: untrained demo weights; these numbers show the method, not a model."


def _number(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _with_interval(entry: dict, name: str) -> str:
    value, interval = entry.get(name), entry.get(f"{name}_interval")
    if value is None:
        return "—"
    return _number(value) + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")


def _roc_png(entry: dict, curve: tuple[np.ndarray, np.ndarray], demo: bool) -> str:
    sensitivity, specificity = curve
    fig = Figure(figsize=(4.2, 4.2), dpi=96)
    ax = fig.subplots()
    ax.plot(1 - specificity, sensitivity, drawstyle="steps-post", color="#1f5fa8", label="ROC")
    ax.plot([0, 1], [0, 1], linestyle=":", color="#999999", label="chance")
    point = (1 - entry["specificity"], entry["sensitivity"])
    marker = "site threshold" if entry["source"] == "site" else "bundle threshold (kept)"
    ax.plot(*point, "o", color="#c0392b", label=f"{marker} {entry['threshold']:.6g}")
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(f"{entry['name']} (AUROC {_number(entry['auroc'])})", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    if demo:
        ax.text(0.5, 0.5, "DEMO", transform=ax.transAxes, fontsize=40, color="#c0392b", alpha=0.25,
                ha="center", va="center", rotation=30)  # fmt: skip
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }
.demo { background: #c0392b; color: white; padding: 0.8em; font-weight: bold; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
tr.kept td { color: #666; }
figure { display: inline-block; margin: 0.5em; }
"""


def render(document: dict, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """The report of a site-thresholds.json document; curves: per class code, (sensitivity, specificity)."""
    b, esc = document["bundle"], html.escape
    demo = bool(b["demo"])
    rows, figures = [], []
    for entry in document["classes"]:
        kept = entry["source"] == "bundle"
        threshold = f"{entry['threshold']:.6g}"  # as the service compares it (a short decimal)
        if entry.get("threshold_interval"):
            low, high = entry["threshold_interval"]
            threshold += f" ({low:.3f}–{high:.3f})"
        counts = "—" if entry["positives"] is None else f"{entry['positives']} / {entry['negatives']}"
        rows.append(
            f'<tr class="{"kept" if kept else "site"}"><td>{esc(entry["name"])}<br><code>{esc(entry["code"])}</code></td>'
            f"<td>{counts}</td><td>{esc(entry['target'] or '—')}</td><td>{entry['bundle_threshold']:.6g}</td>"
            f"<td><b>{threshold}</b></td><td>{_with_interval(entry, 'sensitivity')}</td>"
            f"<td>{_with_interval(entry, 'specificity')}</td><td>{_with_interval(entry, 'auroc')}</td>"
            f"<td>{'bundle threshold kept: ' + esc(entry['reason']) if kept else 'site threshold'}</td></tr>"
        )
        if entry["code"] in curves and entry["sensitivity"] is not None:
            png = _roc_png(entry, curves[entry["code"]], demo)
            figures.append(
                f'<figure><img alt="ROC curve of {esc(entry["name"])}" src="data:image/png;base64,{png}"></figure>'
            )
    banner = f'<p class="demo">{esc(DEMO_BANNER)}</p>' if demo else ""
    rules = document["rules"]
    boot = rules["bootstrap"]
    targets = document["targets"]
    goal = esc(targets["all"] or "none for all classes")
    if targets["per_class"]:
        goal += "; " + esc(", ".join(f"{c}: {t}" for c, t in targets["per_class"].items()))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Site calibration: {esc(b["id"])} {esc(b["version"])}</title>
<style>{_STYLE}</style></head><body>
{banner}
<h1>Site calibration of {esc(b["id"])} {esc(b["version"])}{" (DEMO)" if demo else ""}</h1>
<p>{document["images"]} of this site's labelled images, run on {esc(document["engine"])} ({esc(b["precision"])},
{esc(document["device"])}) on {esc(document["created"])}. Target: {goal}.
Thresholds file <code>site-thresholds.json</code>, content hash <code>{esc(document["content_sha256"][:12])}</code>
(results it decides say <code>site@{esc(document["content_sha256"][:12])}</code>).</p>
<h2>How to read this</h2>
<ul>
<li><b>Sensitivity</b>: of the images labelled positive, the share the threshold calls positive.
<b>Specificity</b>: of the images labelled negative, the share it calls negative. A finding is called positive
when its probability is at or above the threshold.</li>
<li><b>AUROC</b>: the chance that a positive image scores above a negative one (0.5 is chance, 1 is perfect).</li>
<li>Ranges in brackets are 95% intervals from {boot["resamples"]} bootstrap resamples (seed {boot["seed"]},
positives and negatives resampled separately): the fewer the images, the wider they are. The threshold's range
shows how much the chosen threshold moves between resamples.</li>
<li>A class keeps the bundle's threshold when it has fewer than {rules["min_positives"]} positive or
{rules["min_negatives"]} negative images, no labels, or no target; its sensitivity and specificity are then those
of the bundle's threshold on these images.</li>
<li>These figures hold for images like these and labels as good as these; they are not a clinical validation.</li>
</ul>
<table><tr><th>finding</th><th>positive / negative images</th><th>target</th><th>bundle threshold</th>
<th>threshold (95%)</th><th>sensitivity (95%)</th><th>specificity (95%)</th><th>AUROC (95%)</th><th>decision</th></tr>
{"".join(rows)}
</table>
<h2>ROC curves</h2>
{"".join(figures) or "<p>No class has both positive and negative images.</p>"}
{banner}
</body></html>
"""
