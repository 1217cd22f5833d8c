"""``linewatch audit``: one self-contained HTML report for reviewing the flagged images of an inspection.

The report is a single file (images inline as base64 JPEG, no script or style from elsewhere, no
network), so it opens from a USB stick on any machine with a browser. It holds:

* a summary: counts (inspected, flagged, errors, reviewed), an SVG histogram of the scores of
  not-flagged and flagged images with the threshold, and the drift of the most recent scores against
  the bundle's calibration scores (PSI and KS, :mod:`linewatch.runtime.drift`);
* one card per flagged image, highest score first: the heat-map overlay and the image, score against
  threshold and p-value, the nearest good training images of the bundle's gallery in the density's
  representation space (:mod:`linewatch.runtime.gallery`) and, when the bundle has a pixel decoder,
  the image reconstructed from its patch features;
* filters (score range, source substring, review state) and keyboard review: ``j``/``k`` or the arrow
  keys move, ``d`` marks the current image a defect, ``g`` good (a false alarm), ``u`` undoes, ``e``
  exports. Verdicts stay in the browser's localStorage (a reload keeps them) and are exported as
  ``verdicts.jsonl``, one JSON object per reviewed image::

      {"source": <the results.jsonl source, verbatim>, "label": "defect" | "good", "score": <float>,
       "bundle": <bundle id of the results record>, "reviewed_utc": <ISO 8601>}

  which ``linewatch retrain`` reads (``label: "good"`` = a false alarm: the part is good).

onnxruntime + numpy + OpenCV only (it runs on the edge runtime too). The source images are read
again, to compute their representations; a missing source file is reported in its card.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .drift import drift_report
from .gallery import Gallery, embed, shrunk_jpeg
from .heatmap import overlay
from .inspect_run import RESULTS_NAME, read_results
from .inspector import Inspector
from .preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image, display_bgr, preprocess

IMAGE_PX = 224          # longest side of the inline heat map and image
IMAGE_QUALITY = 72      # their JPEG quality
NEIGHBOURS = 3          # nearest gallery images per card


class AuditError(ValueError):
    """Results or bundle that cannot be audited; the message says which file, what is wrong and what to do."""


# ---------------------------------------------------------------------------------------------- images

def jpeg_data_uri(image_bgr: np.ndarray, max_side: int = IMAGE_PX, quality: int = IMAGE_QUALITY) -> str:
    """``uint8 (H, W, 3)`` BGR -> ``data:image/jpeg;base64,...`` shrunk so its longer side is at most ``max_side``."""
    return "data:image/jpeg;base64," + base64.b64encode(shrunk_jpeg(image_bgr, max_side, quality)).decode("ascii")


class Reconstructor:
    """The bundle's pixel decoder (manifest ``decoder``, ``decoder.onnx``): patch features -> an image.

    :meth:`load` returns ``None`` when the bundle has no decoder, or one whose input is not model.onnx's
    ``patch_features`` output (``decoder.model_output``), so callers just skip the reconstruction.
    """

    def __init__(self, bundle: Bundle, spec: dict[str, Any]):
        self.spec = spec
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(bundle.file(spec["file"])), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, bundle: Bundle) -> "Reconstructor | None":
        spec = dict(getattr(bundle.manifest, "decoder", None) or {})
        if not spec or spec.get("model_output") != "patch_features" or "file" not in spec:
            return None
        return cls(bundle, spec)

    def __call__(self, patch_features: np.ndarray) -> np.ndarray:
        """``float32 (1, h*w, d)`` -> ``uint8 (H, W, 3)`` BGR (the decoder's output in [0, 1], scaled)."""
        s = self.spec
        out = self.session.run([s["output"]], {s["input"]: np.ascontiguousarray(patch_features, np.float32)})[0][0]
        img = (np.clip(np.moveaxis(out, 0, -1), 0.0, 1.0) * 255).round().astype(np.uint8)
        if img.shape[2] == 1:
            return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if s.get("color_order", "RGB") == "RGB" else img


# ---------------------------------------------------------------------------------------------- data

@dataclass
class Card:
    """One flagged image as shown in the report (strings not yet escaped)."""

    source: str
    score: float
    threshold: float
    p_value: float | None
    bundle: str
    latency_ms: float | None = None
    heatmap_uri: str | None = None
    image_uri: str | None = None
    reconstruction_uri: str | None = None
    neighbours: list[tuple[int, float]] = field(default_factory=list)   # (gallery index, distance)
    notes: list[str] = field(default_factory=list)


def _is_flagged(r: dict) -> bool:
    return r.get("error") is None and r.get("score") is not None and float(r["score"]) > float(r["threshold"])


def _check_bundle(records: list[dict], bundle: Bundle, results: Path) -> None:
    ids = {r.get("bundle") for r in records} - {None}
    if ids and ids != {bundle.id}:
        raise AuditError(f"{results}: written by bundle {', '.join(sorted(map(str, ids)))}, but --bundle {bundle.path} "
                         f"is bundle {bundle.id}; pass the bundle folder that inspected these images")


def _read_image(path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_image(Path(path).read_bytes(), source=path, max_pixels=DEFAULT_MAX_PIXELS), None
    except FileNotFoundError:
        return None, (f"the source image is no longer at {path} (moved or deleted, or a frame that was never saved): "
                      "no nearest good images")
    except OSError as exc:
        return None, f"the source image {path} cannot be read ({exc.strerror or exc})"
    except ImageError as exc:
        return None, str(exc)


def _find_heatmap(rec: dict, results_dir: Path) -> Path | None:
    h = rec.get("heatmap")
    if not h:
        return None
    for p in (Path(h), results_dir / "heatmaps" / Path(h).name):
        if p.is_file():
            return p
    return None


def build_card(rec: dict, inspector: Inspector, gallery: Gallery | None, recon: Reconstructor | None,
               results_dir: Path, neighbours: int = NEIGHBOURS) -> Card:
    """Everything one card shows for the results record ``rec`` of a flagged image."""
    m = inspector.bundle.manifest
    card = Card(source=str(rec["source"]), score=float(rec["score"]), threshold=float(rec["threshold"]),
                p_value=rec.get("p_value"), bundle=str(rec.get("bundle")), latency_ms=rec.get("latency_ms"))
    heat = _find_heatmap(rec, results_dir)
    if heat is not None:
        h = cv2.imread(str(heat), cv2.IMREAD_COLOR)
        if h is not None:
            card.heatmap_uri = jpeg_data_uri(h)
    img, problem = _read_image(card.source)
    if problem:
        card.notes.append(problem)
        if card.heatmap_uri is None:
            card.notes.append("no heat map either (inspected with --no-heatmaps, or the heatmaps folder moved)")
        return card
    bgr = display_bgr(img)
    card.image_uri = jpeg_data_uri(bgr)
    try:
        x = preprocess(img, inspector.spec, source=card.source)[None]
    except ImageError as exc:           # e.g. the file was replaced by one far smaller than the model input
        card.notes.append(str(exc))
        return card
    names = [m.model.score_output, m.model.map_output] + ([m.model.features_output] if m.model.features_output else [])
    outs = inspector.session.run(names, {m.model.input_name: x})
    score, pmap = float(outs[0][0]), outs[1][0]
    if abs(score - card.score) > 1e-3 * max(1.0, abs(card.score)) + 1e-2:
        card.notes.append(f"the file changed since it was inspected: it scores {score:.4g} now "
                          f"(recorded {card.score:.4g}); the recorded score is the one reviewed")
    if card.heatmap_uri is None:
        card.heatmap_uri = jpeg_data_uri(overlay(bgr, pmap, m.calibration.heatmap_low, inspector.threshold))
    if len(outs) < 3:
        card.notes.append("this bundle's graph has no patch features (made by an older linewatch): no nearest "
                          "good images; re-export it with `linewatch export`")
        return card
    feats = outs[2]
    if gallery is not None and len(gallery):
        idx, dist = gallery.nearest(embed(feats)[0], neighbours)
        card.neighbours = [(int(i), float(d)) for i, d in zip(idx, dist)]
    if recon is not None:
        card.reconstruction_uri = jpeg_data_uri(recon(feats))
    return card


# ---------------------------------------------------------------------------------------------- HTML

def esc(s: Any) -> str:
    """Text or attribute value for HTML: ``& < > " '`` escaped."""
    return html.escape(str(s), quote=True)


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&`` as ``\\u`` escapes, all
    non-ASCII escaped (so ``</script>`` or a line separator in a path cannot end the element)."""
    return (json.dumps(obj, ensure_ascii=True, allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def histogram_svg(good: np.ndarray, flagged: np.ndarray, threshold: float, bins: int = 30,
                  width: int = 640, height: int = 170) -> str:
    """Inline SVG: stacked histogram of not-flagged (blue) and flagged (red) scores, threshold as a dashed line."""
    good, flagged = np.asarray(good, float), np.asarray(flagged, float)
    allv = np.concatenate([good, flagged, [threshold]])
    lo, hi = float(allv.min()), float(allv.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    cg, _ = np.histogram(good, edges)
    cf, _ = np.histogram(flagged, edges)
    top = max(1, int((cg + cf).max()))
    left, bottom, plot_h = 40, 30, height - 45
    bw = (width - left - 10) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="score histogram" class="hist">']
    for i in range(bins):
        x = left + i * bw
        hg, hf = plot_h * cg[i] / top, plot_h * cf[i] / top
        y0 = height - bottom
        if cg[i]:
            parts.append(f'<rect x="{x:.1f}" y="{y0 - hg:.1f}" width="{bw - 1:.1f}" height="{hg:.1f}" fill="#4878b0">'
                         f'<title>{cg[i]} not flagged in [{edges[i]:.4g}, {edges[i + 1]:.4g})</title></rect>')
        if cf[i]:
            parts.append(f'<rect x="{x:.1f}" y="{y0 - hg - hf:.1f}" width="{bw - 1:.1f}" height="{hf:.1f}" '
                         f'fill="#c8402a"><title>{cf[i]} flagged in [{edges[i]:.4g}, {edges[i + 1]:.4g})</title></rect>')
    tx = left + (threshold - lo) / (hi - lo) * (width - left - 10)
    y_axis = height - bottom
    parts += [
        f'<line x1="{left}" y1="{y_axis}" x2="{width - 10}" y2="{y_axis}" stroke="#444"/>',
        f'<line x1="{tx:.1f}" y1="8" x2="{tx:.1f}" y2="{y_axis}" stroke="#111" stroke-dasharray="4 3" class="thr"/>',
        f'<text x="{tx + 4:.1f}" y="18" font-size="11">threshold {threshold:.4g}</text>',
        f'<text x="{left}" y="{height - 12}" font-size="11">{lo:.4g}</text>',
        f'<text x="{width - 10}" y="{height - 12}" font-size="11" text-anchor="end">{hi:.4g}</text>',
        f'<text x="{(left + width) / 2:.0f}" y="{height - 2}" font-size="11" text-anchor="middle">image score (nats)</text>',
        f'<text x="4" y="16" font-size="11">{top}</text>',
        f'<rect x="{width - 170}" y="6" width="10" height="10" fill="#4878b0"/>'
        f'<text x="{width - 156}" y="15" font-size="11">not flagged ({good.size})</text>',
        f'<rect x="{width - 170}" y="22" width="10" height="10" fill="#c8402a"/>'
        f'<text x="{width - 156}" y="31" font-size="11">flagged ({flagged.size})</text>',
        '</svg>']
    return "".join(parts)


def _card_html(i: int, c: Card, gallery: Gallery | None) -> str:
    figs = []
    if c.heatmap_uri:
        figs.append(f'<figure><img src="{c.heatmap_uri}" alt="heat map"><figcaption>heat map</figcaption></figure>')
    if c.image_uri:
        figs.append(f'<figure><img src="{c.image_uri}" alt="image"><figcaption>image</figcaption></figure>')
    if c.reconstruction_uri:
        figs.append(f'<figure><img src="{c.reconstruction_uri}" alt="reconstruction">'
                    '<figcaption>decoded from its patch features</figcaption></figure>')
    if c.neighbours and gallery is not None:
        thumbs = "".join(f'<div class="thumb g{g}" title="{esc(gallery.names[g])} (distance {d:.3g})"></div>'
                         for g, d in c.neighbours)
        figs.append(f'<figure class="nn"><div class="thumbs">{thumbs}</div>'
                    '<figcaption>nearest good training images</figcaption></figure>')
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in c.notes)
    margin = c.score - c.threshold
    return (f'<section class="card" id="card-{i}" data-i="{i}" tabindex="-1">'
            f'<header><span class="rank">#{i + 1}</span> <span class="src">{esc(c.source)}</span>'
            f'<span class="verdict">not reviewed</span></header>'
            f'<div class="figs">{"".join(figs)}</div>'
            f'<p class="figures">score <b>{_fmt(c.score)}</b> against threshold {_fmt(c.threshold)} '
            f'(+{_fmt(margin, 3)}), p-value {_fmt(c.p_value, 3)}'
            + (f', {_fmt(c.latency_ms, 3)} ms' if c.latency_ms is not None else '') + f'</p>{notes}</section>')


CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f2;color:#222}
main{max-width:1100px;margin:0 auto;padding:0 12px 40px}
h1{font-size:20px;margin:14px 0 4px}h2{font-size:16px;margin:18px 0 6px}
.bar{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ccc;padding:6px 12px;
 display:flex;flex-wrap:wrap;gap:10px;align-items:center;font-size:13px}
.bar input{width:80px}.bar input.wide{width:180px}
.counts span{margin-right:14px}.small{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.card{background:#fff;border:2px solid #ddd;border-radius:6px;margin:10px 0;padding:8px;outline:none;scroll-margin:90px 0 10px}
.card.current{border-color:#1a5fd0;box-shadow:0 0 0 2px #1a5fd033}
.card.defect{background:#fdecea}.card.good{background:#eaf6ea}
.card header{display:flex;gap:8px;align-items:baseline;font-size:13px}
.card .src{font-family:monospace;word-break:break-all;flex:1}
.card .verdict{font-weight:bold;white-space:nowrap}
.card.defect .verdict{color:#b02a1a}.card.good .verdict{color:#1d7a2c}
.figs{display:flex;flex-wrap:wrap;gap:10px;margin-top:6px}
figure{margin:0}figure img{display:block;width:192px;height:192px;object-fit:contain;background:#eee}
figcaption{font-size:11px;color:#555}
.thumbs{display:flex;gap:4px;height:192px;align-items:center}
.thumb{width:96px;height:96px;background-size:contain;background-repeat:no-repeat;background-position:center;border:1px solid #ccc}
.note{color:#8a4b00;font-size:12px;margin:4px 0}
.warn{color:#b02a1a;font-weight:bold}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 3px;font-size:11px;background:#fafafa}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("lw-data").textContent);
  var KEY = "linewatch-audit/v1/" + data.bundle + "/" + data.results;
  var verdicts = {};
  try { verdicts = JSON.parse(localStorage.getItem(KEY) || "{}") || {}; } catch (e) { verdicts = {}; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var undoStack = [];
  var cur = -1;
  function $(id) { return document.getElementById(id); }
  function item(i) { return data.items[+cards[i].dataset.i]; }
  function save() { try { localStorage.setItem(KEY, JSON.stringify(verdicts)); } catch (e) { status("could not save to localStorage: " + e); } }
  function status(msg) { $("status").textContent = msg; }
  function render(i) {
    var v = verdicts[item(i).source], c = cards[i];
    c.classList.toggle("defect", !!v && v.label === "defect");
    c.classList.toggle("good", !!v && v.label === "good");
    c.querySelector(".verdict").textContent = !v ? "not reviewed" : v.label === "defect" ? "defect" : "good (false alarm)";
  }
  function progress() {
    var n = 0, vis = 0, i;
    for (i = 0; i < cards.length; i++) { if (verdicts[item(i).source]) n++; if (!cards[i].hidden) vis++; }
    $("reviewed").textContent = n;
    $("progress").textContent = "reviewed " + n + " of " + cards.length + " (" + vis + " shown)";
  }
  function setCurrent(i, quiet) {
    if (cur >= 0) cards[cur].classList.remove("current");
    cur = i;
    if (i < 0) return;
    cards[i].classList.add("current");
    if (!quiet) cards[i].scrollIntoView({block: "nearest"});
  }
  function move(step) {
    var i = cur;
    for (;;) {
      i += step;
      if (i < 0 || i >= cards.length) return;
      if (!cards[i].hidden) { setCurrent(i); return; }
    }
  }
  function firstVisible() { for (var i = 0; i < cards.length; i++) if (!cards[i].hidden) return i; return -1; }
  function applyFilters() {
    var lo = parseFloat($("f-min").value), hi = parseFloat($("f-max").value);
    var text = $("f-source").value.toLowerCase(), show = $("f-show").value;
    for (var i = 0; i < cards.length; i++) {
      var it = item(i), v = verdicts[it.source], ok = true;
      if (!isNaN(lo) && it.score < lo) ok = false;
      if (!isNaN(hi) && it.score > hi) ok = false;
      if (text && it.source.toLowerCase().indexOf(text) < 0) ok = false;
      if (show === "unreviewed" && v) ok = false;
      if ((show === "defect" || show === "good") && (!v || v.label !== show)) ok = false;
      cards[i].hidden = !ok;
    }
    if (cur < 0 || cards[cur].hidden) setCurrent(firstVisible(), true);
    progress();
  }
  function mark(label) {
    if (cur < 0 || cards[cur].hidden) { status("no image selected"); return; }
    var it = item(cur);
    undoStack.push({source: it.source, prev: verdicts[it.source] || null, index: cur});
    verdicts[it.source] = {source: it.source, label: label, score: it.score, bundle: it.bundle,
                           reviewed_utc: new Date().toISOString()};
    save(); render(cur); progress();
    status("#" + (cur + 1) + " marked " + (label === "good" ? "good (false alarm)" : "defect"));
    move(1);
  }
  function undo() {
    var u = undoStack.pop();
    if (!u) { status("nothing to undo"); return; }
    if (u.prev) verdicts[u.source] = u.prev; else delete verdicts[u.source];
    save(); render(u.index); progress(); setCurrent(u.index);
    status("undone: #" + (u.index + 1));
  }
  function exportVerdicts() {
    var lines = [];
    for (var i = 0; i < cards.length; i++) {
      var v = verdicts[item(i).source];
      if (v) lines.push(JSON.stringify({source: v.source, label: v.label, score: v.score, bundle: v.bundle,
                                        reviewed_utc: v.reviewed_utc}));
    }
    if (!lines.length) { status("nothing reviewed yet: nothing to export"); return; }
    var blob = new Blob([lines.join("\n") + "\n"], {type: "application/x-ndjson"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "verdicts.jsonl";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
    status("exported " + lines.length + " verdicts to verdicts.jsonl");
  }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target && ev.target.tagName;
    if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var k = ev.key, done = true;
    if (k === "j" || k === "ArrowDown" || k === "ArrowRight") move(1);
    else if (k === "k" || k === "ArrowUp" || k === "ArrowLeft") move(-1);
    else if (k === "d") mark("defect");
    else if (k === "g") mark("good");
    else if (k === "u") undo();
    else if (k === "e") exportVerdicts();
    else done = false;
    if (done) ev.preventDefault();
  });
  cards.forEach(function (c, i) { c.addEventListener("click", function () { setCurrent(i, true); }); });
  ["f-min", "f-max", "f-source", "f-show"].forEach(function (id) { $(id).addEventListener("input", applyFilters); });
  $("export").addEventListener("click", exportVerdicts);
  for (var i = 0; i < cards.length; i++) render(i);
  applyFilters();
  document.body.dataset.ready = "1";
})();
"""


def _drift_html(d: dict) -> str:
    if d.get("psi") is None:
        return f'<p>Drift: {esc(d.get("note", "not computed"))}.</p>'
    cls = ' class="warn"' if d["verdict"] == "shift" else ""
    rows = "".join(f"<tr><td>{b + 1}</td><td>{100 * e:.1f}%</td><td>{100 * a:.1f}%</td></tr>"
                   for b, (e, a) in enumerate(zip(d["calibration_shares"], d["recent_shares"])))
    return (f'<p>Drift of the {d["n_recent"]} most recent scores against the bundle\'s {d["n_calibration"]} '
            f'calibration scores: <b id="psi">PSI {d["psi"]:.3f}</b> ({d["bins"]} quantile bins of the calibration '
            f'scores), <b id="ks">KS D {d["ks"]:.3f}</b> (asymptotic p {d["ks_p_value"]:.3g}): '
            f'<span{cls}>{esc(d["verdict"])}</span>. Rule of thumb: {esc(d["psi_rule"])}. Recent scores include '
            'defective parts, which raise both.</p>'
            f'<details><summary class="small">shares per bin</summary><table><tr><th>bin</th><th>calibration</th>'
            f'<th>recent</th></tr>{rows}</table></details>')


def render_html(summary: dict, cards: list[Card], gallery: Gallery | None, good: np.ndarray, flagged: np.ndarray,
                threshold: float, drift: dict, errors: list[dict]) -> str:
    used = sorted({g for c in cards for g, _ in c.neighbours})
    gallery_css = "".join(
        f".g{g}{{background-image:url(data:image/jpeg;base64,{base64.b64encode(gallery.thumbnails[g]).decode()})}}"
        for g in used) if gallery is not None else ""
    items = [{"source": c.source, "score": c.score, "bundle": c.bundle} for c in cards]
    data = {"bundle": summary["bundle_id"], "results": summary["results"], "items": items}
    err_rows = "".join(f"<li><span class=\"src\">{esc(r.get('source'))}</span>: {esc(r.get('error'))}</li>"
                       for r in errors[:100])
    more_err = f"<li>... and {len(errors) - 100} more</li>" if len(errors) > 100 else ""
    s = summary
    hidden_note = (f'<p class="note">{s["flagged"] - s["shown"]} flagged images with lower scores are not in this '
                   f'report (--limit {s["shown"]}).</p>' if s["flagged"] > s["shown"] else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>linewatch audit: {esc(s["results"])}</title>
<style>{CSS}{gallery_css}</style></head>
<body>
<div class="bar">
  <span id="progress">reviewed 0 of {len(cards)}</span>
  <label>score &ge; <input id="f-min" type="number" step="any"></label>
  <label>&le; <input id="f-max" type="number" step="any"></label>
  <label>source contains <input id="f-source" class="wide" type="text"></label>
  <label>show <select id="f-show"><option value="all">all</option><option value="unreviewed">not reviewed</option>
    <option value="defect">defect</option><option value="good">good (false alarm)</option></select></label>
  <button id="export" type="button">Export verdicts</button>
  <span class="small"><kbd>j</kbd>/<kbd>k</kbd> or arrows move, <kbd>d</kbd> defect, <kbd>g</kbd> good (false alarm),
  <kbd>u</kbd> undo, <kbd>e</kbd> export</span>
  <span id="status" class="small" role="status"></span>
</div>
<main>
<h1>linewatch audit</h1>
<p class="small">results <span class="src">{esc(s["results"])}</span>, bundle {esc(s["bundle_id"])}
({esc(s["bundle"])}), made {esc(s["generated_utc"])}</p>
<p class="counts"><span>inspected <b id="n-inspected">{s["inspected"]}</b></span>
<span>flagged <b id="n-flagged">{s["flagged"]}</b></span>
<span>not flagged <b>{s["not_flagged"]}</b></span>
<span>errors <b id="n-errors">{s["errors"]}</b></span>
<span>reviewed <b id="reviewed">0</b> of {len(cards)} shown</span></p>
<p class="small">An image is flagged when its score is above the threshold {threshold:.4g} (nats; target false-alarm
rate {s["target_false_alarm_rate"]:g}). The p-value is the share of good calibration images scoring at least as high.</p>
{histogram_svg(good, flagged, threshold)}
{_drift_html(drift)}
{hidden_note}
{f'<details><summary>{len(errors)} images could not be inspected</summary><ul class="small">{err_rows}{more_err}</ul></details>' if errors else ''}
<h2>Flagged images, highest score first</h2>
{''.join(_card_html(i, c, gallery) for i, c in enumerate(cards)) or '<p>No flagged images.</p>'}
</main>
<script type="application/json" id="lw-data">{script_json(data)}</script>
<script>{JS}</script>
</body></html>
"""


def build_report(results_dir: str | os.PathLike, bundle: str | os.PathLike | Bundle, limit: int | None = 200,
                 recent: int = 200, threads: int = 1, neighbours: int = NEIGHBOURS,
                 progress: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """The report's HTML and a JSON-able summary for the inspection in ``results_dir`` (its ``results.jsonl``).

    ``limit``: at most this many flagged images get a card (highest scores; ``None`` = all);
    ``recent``: how many of the last scores the drift figures use.
    """
    say = progress or (lambda _m: None)
    results_dir = Path(results_dir)
    results = results_dir / RESULTS_NAME if results_dir.is_dir() else results_dir
    if not results.is_file():
        raise AuditError(f"{results}: no such results file; pass the --out folder of `linewatch inspect`")
    records = [r for r in read_results(results) if isinstance(r, dict) and "source" in r]
    if not records:
        raise AuditError(f"{results}: holds no results records; run `linewatch inspect` into that folder first")
    inspector = Inspector(bundle, threads=threads)
    _check_bundle(records, inspector.bundle, results)
    m = inspector.bundle.manifest
    failed = [r.get("error") is not None or r.get("score") is None for r in records]
    errors = [r for r, f in zip(records, failed) if f]
    scored = [r for r, f in zip(records, failed) if not f]
    flagged = sorted((r for r in scored if _is_flagged(r)), key=lambda r: -float(r["score"]))
    shown = flagged if limit is None else flagged[:max(0, int(limit))]
    gallery = Gallery.load(inspector.bundle)
    recon = Reconstructor.load(inspector.bundle)
    t0 = time.perf_counter()
    cards = []
    for i, rec in enumerate(shown, start=1):
        cards.append(build_card(rec, inspector, gallery, recon, results.parent, neighbours))
        if i % 20 == 0 or i == len(shown):
            say(f"audit: {i}/{len(shown)} flagged images")
    scores = np.array([float(r["score"]) for r in scored])
    is_flag = np.array([_is_flagged(r) for r in scored], dtype=bool)
    drift = drift_report(np.asarray(m.calibration.scores, float), scores[-recent:] if recent > 0 else scores[:0])
    summary = {
        "results": str(results.resolve()), "bundle": str(inspector.bundle.path), "bundle_id": inspector.bundle.id,
        "generated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inspected": len(records), "flagged": len(flagged), "not_flagged": int(len(scored) - len(flagged)),
        "errors": len(errors), "shown": len(cards),
        "threshold": float(m.decision.threshold), "target_false_alarm_rate": float(m.decision.target_false_alarm_rate),
        "gallery_images": len(gallery) if gallery is not None else 0, "reconstruction": recon is not None,
        "missing_sources": sum(any("no longer at" in n for n in c.notes) for c in cards),
        "drift": {k: drift.get(k) for k in ("psi", "ks", "ks_p_value", "n_recent", "n_calibration", "verdict")},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    page = render_html(summary, cards, gallery, scores[~is_flag], scores[is_flag], float(m.decision.threshold),
                       drift, errors)
    return page, summary


def write_report(results_dir: str | os.PathLike, bundle: str | os.PathLike | Bundle, out: str | os.PathLike,
                 **kwargs: Any) -> dict:
    """:func:`build_report` written atomically to ``out``; returns the summary with ``out`` and ``bytes``."""
    page, summary = build_report(results_dir, bundle, **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    summary.update(out=str(out), bytes=out.stat().st_size)
    return summary
