"""``linewatch retrain``: train -> inspect a shifted production set (false alarms) -> verdicts -> retrain.

The data: a 64-px brick category (40 training, 40 validation, 20 good test images, 2 of each defect) and
"production" images from other positions of the texture under a brighter lamp (+80 grey levels): good
parts that the first bundle, never trained on that light, flags. The reviewers mark those flagged
images good; the challenger trains on them and must flag fewer of them, without getting worse on the
held-out evaluation set (the gate), and the manifest must say so.

The first retrain run is killed with SIGKILL while exporting (issue 8): no partial bundle may appear
where a reader would load it, the inputs must be untouched, and the next run must clean up and succeed.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SMALL_CONFIG
from linewatch.jobs.retrain import GateRefused, gate, recover_interrupted, run_retrain, split_reviewed
from linewatch.jobs.verdicts import VerdictError, write_verdicts
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.inspect_run import read_results, run_inspection
from linewatch.runtime.inspector import Inspector

# a much brighter, harsher lamp: contrast x2 and +40 grey levels, beyond the benign shifts the bank already
# covers (brightness +-10 %), so the champion raises false alarms for the reviewers to mark
CONTRAST, BRIGHTER = 2.0, 40


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _verdicts(path: Path, records: list[dict], label: str) -> Path:
    return write_verdicts(path, [{"source": r["source"], "label": label, "score": r["score"], "bundle": r["bundle"],
                                  "reviewed_utc": "2026-12-01T08:00:00+00:00"} for r in records])


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict
    from linewatch.training.demo_data import DemoSpec, build_texture

    root = tmp_path_factory.mktemp("retrain")
    data = build_texture("brick", root / "data", DemoSpec(size=64, n_train=40, n_test_good=20, n_test_per_defect=2,
                                                         n_validation=40))
    other = build_texture("brick", root / "other", DemoSpec(size=64, n_train=20, n_test_good=0, n_test_per_defect=0,
                                                           n_validation=0, defect_types=(), seed=1))
    bright = root / "production" / "bright"
    bright.mkdir(parents=True)
    for p in sorted((other / "train" / "good").rglob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.int16)
        cv2.imwrite(str(bright / f"{p.parent.name}_{p.name}"), np.clip(img * CONTRAST + BRIGHTER, 0, 255).astype(np.uint8))
    b1 = root / "b1"
    run_train(data, b1, config_from_dict(SMALL_CONFIG))
    inspected = run_inspection(Inspector(b1), str(bright), root / "inspected", heatmaps=False)
    flagged = [r for r in read_results(inspected.results) if r["anomalous"]]
    assert len(flagged) >= 5, f"the brighter images should raise false alarms; {len(flagged)} of 20 flagged"
    verdicts = _verdicts(root / "verdicts.jsonl", flagged, "good")
    return {"root": root, "data": data, "b1": b1, "bright": bright, "flagged": flagged, "verdicts": verdicts}


def _retrain_cli(s, out, *extra):
    return [sys.executable, "-m", "linewatch", "retrain", "--bundle", str(s["b1"]), "--data", str(s["data"]),
            "--verdicts", str(s["verdicts"]), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def retrained(scenario):
    """Kill a retrain with SIGKILL while it writes the challenger, then run it again to completion."""
    s = scenario
    out = s["root"] / "b2"
    before = {k: _tree_digest(s[k]) for k in ("data", "b1")} | {"verdicts": s["verdicts"].read_bytes()}
    proc = subprocess.Popen(_retrain_cli(s, out), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "exporting to ONNX" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stderr.close()
    proc.stdout.close()
    killed = {"stderr": "".join(seen), "out_exists": out.exists(),
              "leftovers": sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".b2.")),
              "unchanged": before == {k: _tree_digest(s[k]) for k in ("data", "b1")} | {
                  "verdicts": s["verdicts"].read_bytes()}}
    messages = []
    summary = run_retrain(s["b1"], s["data"], s["verdicts"], out, progress=messages.append)
    return {"out": out, "summary": summary, "messages": messages, "killed": killed}


def test_sigkill_during_retrain_leaves_no_partial_bundle_and_the_rerun_recovers(retrained):
    k = retrained["killed"]
    assert "exporting to ONNX" in k["stderr"], k["stderr"][-2000:]
    assert not k["out_exists"], "a killed retrain must not leave anything at --out"
    assert k["leftovers"] and all(n.startswith(".b2.retrain-") for n in k["leftovers"])   # hidden staging only
    assert k["unchanged"], "retrain must never modify the data folder, the parent bundle or the verdicts"
    assert any("removed the staging folder of a killed retrain" in m for m in retrained["messages"])
    out = retrained["out"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".b2.")]
    Bundle.load(out)                                                         # complete and verified
    assert (out.parent / "b2.ckpt").is_file()


def test_challenger_flags_fewer_of_the_reviewed_false_alarms_and_the_gate_decision_is_recorded(retrained, scenario):
    summary, out = retrained["summary"], retrained["out"]
    champ, chall, g = summary["champion"], summary["challenger"], summary["gate"]
    assert g["passed"] and g["decision"] == "written" and not g["forced"], g
    assert chall["reviewed_false_alarm_rate"] < champ["reviewed_false_alarm_rate"]
    assert chall["image_auroc"] >= champ["image_auroc"] - g["auroc_tolerance"]
    assert chall["false_alarm_rate"] <= champ["false_alarm_rate"]
    ev = summary["evaluation"]
    assert ev["good"] == "test/good" and ev["n_good"] == 20 and ev["n_defect_data"] == 12
    assert ev["n_reviewed_good"] == len(scenario["flagged"]) and ev["n_reviewed_good_held_out"] >= 1

    b2 = Bundle.load(out)
    lin = b2.manifest.lineage
    assert lin["parent"]["id"] == Bundle.load(scenario["b1"]).id
    assert lin["comparison"]["gate"] == g and lin["comparison"]["champion"] == champ
    assert lin["verdicts"]["sha256"] == hashlib.sha256(scenario["verdicts"].read_bytes()).hexdigest()
    assert lin["data"]["original"]["n_images"] == 40 and lin["data"]["original"]["same_as_parent"]
    assert lin["data"]["reviewed_good"]["n_images"] + lin["data"]["reviewed_good_held_out"]["n_images"] == \
        len(scenario["flagged"])
    assert b2.manifest.training_data["n_images"] == 40 + lin["data"]["reviewed_good"]["n_images"]
    assert summary["challenger"]["bundle_id"] == b2.id
    assert lin["data"]["reviewed_good"]["inherited"] == 0
    assert len(lin["data"]["reviewed_good"]["paths"]) == lin["data"]["reviewed_good"]["n_images"]

    # independently of the job's own figures: re-score the reviewed images with both bundles
    flagged_paths = [r["source"] for r in scenario["flagged"]]
    n1 = sum(v.anomalous for v, _, _ in Inspector(scenario["b1"]).inspect_paths(flagged_paths))
    n2 = sum(v.anomalous for v, _, _ in Inspector(out).inspect_paths(flagged_paths))
    assert n1 == len(flagged_paths) and n2 < n1


def test_verdicts_for_another_bundle_are_refused_unless_any_bundle(scenario, tmp_path):
    recs = [dict(r, bundle="0123456789abcdef") for r in scenario["flagged"][:2]]
    v = _verdicts(tmp_path / "other.jsonl", recs, "good")
    with pytest.raises(VerdictError, match="made on other bundles .*0123456789abcdef.*--any-bundle"):
        run_retrain(scenario["b1"], scenario["data"], v, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_gate_rules():
    champ = {"image_auroc": 0.95, "false_alarm_rate": 0.05}
    assert gate(champ, {"image_auroc": 0.946, "false_alarm_rate": 0.05}, 0.005)["passed"]
    worse_auroc = gate(champ, {"image_auroc": 0.944, "false_alarm_rate": 0.0}, 0.005)
    assert not worse_auroc["passed"] and "AUROC 0.9440 < champion 0.9500" in worse_auroc["reasons"][0]
    more_alarms = gate(champ, {"image_auroc": 0.99, "false_alarm_rate": 0.1}, 0.005)
    assert not more_alarms["passed"] and not more_alarms["false_alarm_rate_ok"]
    no_defects = gate({"image_auroc": None, "false_alarm_rate": 0.1}, {"image_auroc": None, "false_alarm_rate": 0.0}, 0)
    assert no_defects["passed"] and "AUROC not compared" in no_defects["reasons"][0]


def test_reviewed_holdout_is_a_deterministic_share_chosen_by_content(tmp_path):
    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        p.write_bytes(bytes([i]) * 10)
        paths.append(p)
    trained, held = split_reviewed(paths, 0.2)
    assert len(held) == 2 and sorted(trained + held) == sorted(paths)
    assert split_reviewed(list(reversed(paths)), 0.2)[1] == list(reversed(held))
    assert split_reviewed(paths, 0.0) == (paths, [])


def test_a_run_killed_between_the_two_renames_gets_the_old_bundle_back(small_bundle, tmp_path):
    import shutil

    out = tmp_path / "b2"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stage = tmp_path / f".b2.retrain-{dead.pid}"
    stage.mkdir()
    shutil.copytree(small_bundle, stage / "old")           # the old b2, moved aside just before the kill
    (stage / "final").mkdir()                              # the new one, not yet renamed in
    notes = []
    recover_interrupted(out, notes.append)
    assert Bundle.load(out).id == Bundle.load(small_bundle).id and not stage.exists()
    assert any("recovered" in n for n in notes)


@pytest.mark.slow
def test_gate_refuses_a_worse_challenger_and_force_writes_it_and_records_it(scenario, tmp_path):
    """Reviewers wrongly mark defective parts as good: the challenger learns defects as normal."""
    from linewatch.training.demo_data import DemoSpec, build_texture

    other = build_texture("brick", tmp_path / "defects", DemoSpec(size=64, n_train=2, n_test_good=0, n_test_per_defect=4,
                                                                  n_validation=0, seed=2))
    b1 = Bundle.load(scenario["b1"])
    wrong = [{"source": str(p), "score": 0.0, "bundle": b1.id}
             for p in sorted((other / "test").rglob("*.png")) if "/good/" not in str(p)]
    v = _verdicts(tmp_path / "wrong.jsonl", wrong, "good")
    out = tmp_path / "b2"
    with pytest.raises(GateRefused) as refused:
        run_retrain(scenario["b1"], scenario["data"], v, out, holdout_reviewed=0.0)
    assert not out.exists() and not (tmp_path / "b2.ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b2.")]
    g = refused.value.comparison["gate"]
    assert not g["passed"] and g["decision"] == "refused" and g["reasons"]
    assert "image AUROC" in str(refused.value) and "false-alarm rate" in str(refused.value)

    proc = subprocess.run(_retrain_cli({**scenario, "verdicts": v}, out, "--force", "--holdout-reviewed", "0"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["gate"]["decision"] == "forced" and printed["gate"]["forced"]
    lineage = Bundle.load(out).manifest.lineage
    assert lineage["comparison"]["gate"]["forced"] and lineage["comparison"]["gate"]["reasons"] == g["reasons"]


@pytest.mark.slow
def test_a_second_retrain_keeps_what_earlier_reviews_taught_unless_a_new_verdict_overrides(retrained, scenario,
                                                                                          tmp_path):
    b2 = Bundle.load(retrained["out"])
    taught = b2.manifest.lineage["data"]["reviewed_good"]["paths"]
    changed = taught[0]                                   # the new review says this one is a defect after all
    v = write_verdicts(tmp_path / "v2.jsonl", [{"source": changed, "label": "defect", "score": 1.0, "bundle": b2.id,
                                               "reviewed_utc": "2026-12-02T08:00:00Z"}])
    run_retrain(b2.path, scenario["data"], v, tmp_path / "b3", force=True)
    lin = Bundle.load(tmp_path / "b3").manifest.lineage
    assert lin["parent"]["id"] == b2.id
    assert lin["data"]["reviewed_good"]["inherited"] == len(taught) - 1
    assert sorted(lin["data"]["reviewed_good"]["paths"]) == sorted(taught[1:])
    assert lin["comparison"]["evaluation"]["n_defect_reviewed"] == 1


@pytest.mark.slow
def test_cli_refusal_exits_3_and_prints_the_comparison(scenario, tmp_path):
    out = tmp_path / "b2"
    proc = subprocess.run(_retrain_cli(scenario, out, "--auroc-tolerance", "-1"), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 3, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["gate"]["decision"] == "refused" and not out.exists()
    assert "refused" in proc.stderr and "--force" in proc.stderr


def test_augment_is_skipped_with_a_note_when_the_bundle_cannot_augment(small_bundle, tmp_path):
    from linewatch.jobs.retrain import _augmented

    notes = []
    assert _augmented(Bundle.load(small_bundle), 4, tmp_path / "aug", 0, notes.append) == []
    assert len(notes) == 1 and notes[0].startswith("note: --augment skipped")


def test_cli_reports_a_bad_verdict_line_and_explains_the_gate_in_help(small_bundle, small_category, tmp_path):
    v = tmp_path / "v.jsonl"
    v.write_text('{"source": "x.png", "label": "maybe", "score": 1, "bundle": "b", "reviewed_utc": "2026-12-01"}\n')
    p = subprocess.run([sys.executable, "-m", "linewatch", "retrain", "--bundle", str(small_bundle), "--data",
                        str(small_category), "--verdicts", str(v), "--out", str(tmp_path / "b2")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "line 1" in p.stderr and "'label'" in p.stderr and p.stdout == ""
    h = subprocess.run([sys.executable, "-m", "linewatch", "retrain", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "gate:" in h.stdout and "--force" in h.stdout and "exits 3" in h.stdout
    h = subprocess.run([sys.executable, "-m", "linewatch", "score-archive", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--engine" in h.stdout
