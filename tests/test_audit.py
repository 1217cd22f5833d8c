"""`linewatch audit`: drift statistics, HTML escaping, the bundle's gallery and the report without torch."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_without_torch
from linewatch.runtime.audit import AuditError, Card, build_report, render_html, script_json
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.drift import PSI_FLOOR, bin_shares, drift_report, ks_p_value, ks_statistic, psi, quantile_edges
from linewatch.runtime.gallery import Gallery, embed
from linewatch.runtime.inspect_run import RESULTS_NAME, read_results, run_inspection
from linewatch.runtime.inspector import Inspector

# A file name a reviewer's browser must neither interpret nor alter.
ODD_NAME = "odd <script><img src=x onerror=alert(1)> & \"q\" 'a' é.png"


def make_results(category: Path, bundle: Path, workdir: Path) -> tuple[Path, Path]:
    """Inspect a copy of the category's test images (one stain image under :data:`ODD_NAME`) into
    ``workdir/results``; returns (results folder, source folder)."""
    src = workdir / "src"
    shutil.copytree(category / "test", src)
    stains = sorted((src / "stain").glob("*.png"))
    stains[0].rename(stains[0].with_name(ODD_NAME))
    out = workdir / "results"
    run_inspection(Inspector(bundle, threads=1), str(src), out)
    return out, src


@pytest.fixture(scope="module")
def audited(small_category, small_bundle, tmp_path_factory):
    return make_results(small_category, small_bundle, tmp_path_factory.mktemp("audit"))


# ---------------------------------------------------------------------------------------------- drift

def test_psi_matches_hand_computed_values():
    ref = np.arange(100.0)                       # deciles: 10 values per bin
    assert np.allclose(bin_shares(ref, quantile_edges(ref)), 0.1)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    recent = np.array([0.0] * 50 + [99.0] * 50)  # half in the first bin, half in the last, none between
    want = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (PSI_FLOOR - 0.1) * math.log(PSI_FLOOR / 0.1)
    assert psi(ref, recent) == pytest.approx(want, rel=1e-12)
    # one bin's worth moved from bin 1 to bin 2: shares 0.05 / 0.15
    moved = np.concatenate([ref[5:10] + 10.0, ref[10:]]).tolist() + ref[:5].tolist()
    assert bin_shares(moved, quantile_edges(ref))[:2] == pytest.approx([0.05, 0.15])
    want = (0.05 - 0.1) * math.log(0.5) + (0.15 - 0.1) * math.log(1.5)
    assert psi(ref, moved) == pytest.approx(want, rel=1e-9)


def test_ks_matches_hand_computed_values_and_scipy():
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([0, 0, 0], [1, 1]) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=57), rng.normal(0.4, 1.0, size=80)
    assert ks_statistic(a, b) == pytest.approx(scipy_stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert ks_p_value(0.0, 50, 50) == 1.0
    assert ks_p_value(0.5, 100, 100) < 1e-9 < ks_p_value(0.1, 100, 100) < 1.0


def test_drift_report_says_shift_and_too_few():
    rng = np.random.default_rng(1)
    cal = rng.normal(size=200)
    assert drift_report(cal, rng.normal(size=300))["verdict"] == "no shift"
    shifted = drift_report(cal, rng.normal(1.5, 1.0, size=300))
    assert shifted["verdict"] == "shift" and shifted["psi"] > 0.25 and shifted["ks"] > 0.4
    assert drift_report(cal, cal[:3])["psi"] is None


# ---------------------------------------------------------------------------------------------- HTML

def test_strings_are_escaped_in_html_and_kept_verbatim_for_the_script():
    card = Card(source="</script>" + ODD_NAME + "\r\n\u2028", score=5.0, threshold=1.0, p_value=0.01, bundle="b<1>",
                notes=[f"the source image is no longer at {ODD_NAME}"])
    summary = {"results": "/r/<x>", "bundle": "B&", "bundle_id": "b<1>", "generated_utc": "t", "inspected": 1,
               "flagged": 1, "not_flagged": 0, "errors": 1, "shown": 1, "target_false_alarm_rate": 0.01}
    page = render_html(summary, [card], None, np.array([0.5]), np.array([5.0]), 1.0,
                       {"note": "x"}, [{"source": "<bad>", "error": "<err & more>"}])
    assert "<img src=x" not in page and "<bad>" not in page and "<err" not in page
    assert page.count("</script>") == 2                       # the two script elements' own end tags
    assert "&lt;/script&gt;odd &lt;script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot; &#x27;a&#x27;" in page
    blob = re.search(r'<script type="application/json" id="lw-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in blob and "&" not in blob and "\u2028" not in blob
    data = json.loads(blob)
    assert data["items"][0]["source"] == card.source          # verbatim, CR, LF and U+2028 included
    assert data["items"][0]["bundle"] == "b<1>"
    assert json.loads(script_json("</script>")) == "</script>"


# ---------------------------------------------------------------------------------------------- gallery

def test_trained_bundle_has_a_gallery_within_budget_in_the_density_space(small_bundle, small_category):
    bundle = Bundle.load(small_bundle)
    section = bundle.manifest.gallery
    assert 0 < section["count"] <= 24 and section["bytes"] <= section["max_bytes"]
    assert section["bytes"] == bundle.manifest.files["gallery.npz"]["bytes"]
    g = Gallery.load(bundle)
    assert len(g) == section["count"] and g.embeddings.shape[1] == section["embedding_dim"]
    # a training image's own representation, computed as the audit computes it, finds itself first
    from linewatch.runtime.preprocess import load_for_model

    name = g.names[len(g) // 2]
    x = load_for_model(small_category / name, bundle.manifest.input)[None]
    q = embed(Inspector(bundle, threads=1).patch_features(x))[0]
    idx, dist = g.nearest(q, 3)
    assert g.names[idx[0]] == name and dist[0] < 0.05 * dist[1]
    assert g.thumbnails[0][:2] == b"\xff\xd8"                 # JPEG


def test_gallery_respects_its_size_budget(small_bundle, small_category):
    from linewatch.export.gallery import build_gallery

    bundle = Bundle.load(small_bundle)
    m = bundle.manifest
    images = [(p.name, p.read_bytes()) for p in sorted((small_category / "train").rglob("*.png"))]
    args = (images, m.input, bundle.file("model.onnx"), m.model.input_name, m.model.features_output)
    full_blob, full = build_gallery(*args, max_images=24, max_bytes=10**7)
    assert full["count"] == 24 and len(full_blob) == full["bytes"]
    blob, small = build_gallery(*args, max_images=24, max_bytes=full["bytes"] // 3)
    assert 0 < small["count"] < 24 and len(blob) <= full["bytes"] // 3
    assert build_gallery(*args, max_images=5, max_bytes=10**7)[1]["count"] == 5
    assert build_gallery(*args, max_images=24, max_bytes=300) is None
    assert build_gallery(*args, max_images=0, max_bytes=10**7) is None


# ---------------------------------------------------------------------------------------------- report

def test_report_runs_without_torch_and_shows_every_flagged_image(audited, small_bundle, tmp_path):
    results, src = audited
    records = read_results(results / RESULTS_NAME)
    flagged = [r for r in records if r["anomalous"]]
    assert flagged and len(flagged) < len(records)
    got = run_without_torch(f"""
        import json, sys
        from linewatch.runtime.audit import write_report
        s = write_report({str(results)!r}, {str(small_bundle)!r}, {str(tmp_path / 'r.html')!r}, limit=None)
        assert "torch" not in sys.modules
        print(json.dumps(s))
    """)
    assert got["flagged"] == len(flagged) == got["shown"] and got["inspected"] == len(records)
    assert got["errors"] == 0 and got["missing_sources"] == 0 and got["gallery_images"] > 0
    assert got["drift"]["n_recent"] == len(records) and got["drift"]["psi"] is not None
    page = (tmp_path / "r.html").read_text()
    assert page.count('class="card"') == len(flagged)
    assert page.count('class="thumb g') == 3 * len(flagged)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    order = [it["source"] for it in json.loads(re.search(r'id="lw-data">(.*?)</script>', page, re.S).group(1))["items"]]
    assert order == [r["source"] for r in sorted(flagged, key=lambda r: -r["score"])]


def test_missing_source_is_said_in_its_card_and_limit_keeps_the_top(audited, small_bundle, tmp_path):
    results, src = audited
    flagged = sorted((r for r in read_results(results / RESULTS_NAME) if r["anomalous"]), key=lambda r: -r["score"])
    moved = Path(flagged[0]["source"])
    shutil.move(moved, tmp_path / "away.png")
    try:
        page, s = build_report(results, small_bundle, limit=2)
    finally:
        shutil.move(tmp_path / "away.png", moved)
    assert s["shown"] == 2 and s["flagged"] == len(flagged) and s["missing_sources"] == 1
    assert "is no longer at" in page and "not in this report (--limit 2)" in page
    assert page.count('class="thumb g') == 3                  # only the card whose image is still there


def test_results_of_another_bundle_are_refused(audited, small_bundle, tmp_path):
    results, _ = audited
    lines = (results / RESULTS_NAME).read_text().splitlines()
    (tmp_path / RESULTS_NAME).write_text("\n".join(l.replace(json.loads(l)["bundle"], "0123456789abcdef")
                                                   for l in lines) + "\n")
    with pytest.raises(AuditError, match="pass the bundle folder that inspected"):
        build_report(tmp_path, small_bundle)
    with pytest.raises(AuditError, match="no such results file"):
        build_report(tmp_path / "nothing", small_bundle)


def test_cli_audit_writes_the_report_and_prints_a_summary(audited, small_bundle, tmp_path):
    results, _ = audited
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "linewatch", "audit", "--results", str(results), "--bundle",
                           str(small_bundle), "--out", str(out), "--recent", "5"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["out"] == str(out) and s["bytes"] == out.stat().st_size and s["drift"]["n_recent"] == 5
    assert "report written" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "linewatch", "audit", "--results", str(tmp_path / "none"), "--bundle",
                          str(small_bundle), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no such results file" in bad.stderr


def test_reconstruction_hook_uses_a_decoder_when_the_manifest_has_one(audited, small_bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from linewatch.runtime.audit import Reconstructor, build_card

    bundle = Bundle.load(small_bundle)
    assert Reconstructor.load(bundle) is None                  # no decoder section: the hook is off
    m = bundle.manifest
    p, d = m.model.map_height * m.model.map_width, m.density["feature_dim"]
    # a stand-in decoder: (N, P, D) -> mean -> sigmoid -> a flat (N, 3, 8, 8) image
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["rows"], ["mu"], axes=[1, 2], keepdims=1),
         helper.make_node("Sigmoid", ["mu"], ["s"]),
         helper.make_node("Unsqueeze", ["s", "ax"], ["s4"]),
         helper.make_node("Expand", ["s4", "shape"], ["image"])],
        "dec", [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", p, d])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor("ax", TensorProto.INT64, [1], [3]), helper.make_tensor("shape", TensorProto.INT64, [4], [1, 3, 8, 8])])
    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), copy / "decoder.onnx")
    b = Bundle.load(copy, verify=False)
    b.manifest.decoder = {"file": "decoder.onnx", "input": "rows", "output": "image", "model_output": "patch_features",
                          "color_order": "RGB"}
    recon = Reconstructor.load(b)
    assert recon is not None
    rec = max((r for r in read_results(audited[0] / RESULTS_NAME) if r["anomalous"]), key=lambda r: r["score"])
    card = build_card(rec, Inspector(b, threads=1), None, recon, audited[0])
    assert card.reconstruction_uri.startswith("data:image/jpeg;base64,")
