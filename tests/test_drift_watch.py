"""The drift warning: the binomial tail, the decision rule on simulated verdict streams (no false warnings
at the target rate, quick warnings far above it, hysteresis, min_images), and ``linewatch inspect`` with a
real small bundle on good images and on images the bundle flags (brightened, inverted, noisy)."""
from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.cli import main
from linewatch.runtime.bundle import Bundle
from linewatch.runtime.calibration import ConformalCalibrator
from linewatch.runtime.drift_watch import (DriftWatch, binomial_tail, expected_false_alarm_rate, warning_message,
                                           watch_bundle)
from linewatch.runtime.inspect_run import read_results

WARNING = re.compile(r"warning: drift: (\d+) of the last (\d+) images flagged \((\d+\.\d) %, target (\d+\.\d) %\): "
                     r"production no longer looks like the calibration images \(light, camera, batch\?\); "
                     r"review flagged images \(linewatch audit\) and recalibrate "
                     r"\(linewatch adapt --calibration DIR\) or retrain")


def first_warning(watch: DriftWatch, flags) -> int | None:
    """The 1-based index of the verdict after which the warning turned on, or None."""
    for i, a in enumerate(flags, start=1):
        change = watch.observe(1.0, bool(a))
        if change is not None and change.drift:
            return i
    return None


@pytest.mark.parametrize("n", [1, 7, 50, 200])
@pytest.mark.parametrize("p", [0.01, 0.077, 0.5])
def test_binomial_tail_is_the_exact_sum(n, p):
    pf = Fraction(p).limit_denominator(1000)          # 1/100, not float 0.01's 2^-56 multiples: fast enough
    for k in range(0, n + 2):
        exact = float(sum(math.comb(n, j) * pf ** j * (1 - pf) ** (n - j) for j in range(k, n + 1)))
        assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-12, abs=1e-300), (k, n, p)
    assert binomial_tail(5, 50, 0.01) < 1e-3 < binomial_tail(4, 50, 0.01)


def test_a_stream_at_the_target_rate_does_not_warn():
    """20 streams of 10000 Bernoulli(1 %) verdicts, window 200 (2 of 200 such streams warned once; not these)."""
    for seed in range(20):
        watch = DriftWatch(0.01)
        assert first_warning(watch, np.random.default_rng(seed).random(10000) < 0.01) is None, seed
        assert watch.warnings_ == 0 and watch.state().window == 200


def test_a_stream_at_ten_times_the_target_warns_within_about_a_hundred_images():
    delays = [first_warning(DriftWatch(0.01), np.random.default_rng(100 + s).random(1000) < 0.10) for s in range(20)]
    assert all(d is not None and 50 <= d <= 150 for d in delays), delays       # never before min_images
    assert np.median(delays) <= 75


def test_hysteresis_clears_below_twice_the_target_and_rewarns_only_on_the_full_test():
    watch = DriftWatch(0.01, window=100, min_images=50)
    assert first_warning(watch, [True] * 100) == 50
    states = [watch.drift]
    changes = []
    for _ in range(99):                              # good images push the flagged ones out of the window
        changes.append(watch.observe(1.0, False))
        states.append(watch.drift)
    # after j good images the window holds 100 - j flagged of 100: below 5 % from j = 96, below 2 % at j = 99
    assert states[95:] == [True, True, True, True, False]
    assert [c is not None for c in changes].index(True) == 98 and changes[98].drift is False
    assert changes[98].flagged == 1 and changes[98].window == 100
    # 5 of 100 is 5x the target, but P(X >= 5 | 100, 1 %) = 0.0034 is not below 1e-3; 6 of 100 is (0.0006)
    for _ in range(5):                               # the first one pushes the last old flagged image out
        assert watch.observe(1.0, True) is None
    assert watch.state().flagged == 5 and not watch.drift
    assert watch.observe(1.0, True).drift and watch.warnings_ == 2


def test_min_images_and_errors():
    watch = DriftWatch(0.01, window=200, min_images=50)
    assert first_warning(watch, [True] * 49) is None
    for _ in range(5):
        assert watch.observe(None, None) is None      # errors are not verdicts
    assert watch.state().window == 49 and not watch.drift
    assert watch.observe(3.0, True).drift
    assert DriftWatch(0.01, window=20).min_images == 20
    assert first_warning(DriftWatch(0.01, window=20), [True] * 20) == 20
    watch.reset()
    assert watch.state().window == 0 and not watch.drift and watch.warnings_ == 0
    for bad in [dict(target_rate=0.0), dict(target_rate=1.0), dict(target_rate=0.01, window=0),
                dict(target_rate=0.01, factor=2.0, clear_factor=2.0)]:
        with pytest.raises(ValueError):
            DriftWatch(**bad)


def test_psi_and_ks_are_reported_but_do_not_decide():
    rng = np.random.default_rng(0)
    cal = rng.normal(100, 10, 300)
    watch = DriftWatch(0.01, cal)
    for s in rng.normal(100, 10, 5):
        watch.observe(s, False)
    assert watch.state().psi is None and watch.state().ks is None           # too few scores
    for s in rng.normal(100, 10, 195):
        watch.observe(s, False)
    same = watch.state()
    for s in rng.normal(140, 10, 200):                 # shifted scores, yet none flagged: no warning
        watch.observe(s, False)
    shifted = watch.state()
    assert same.psi < 0.1 and same.ks < 0.15 and shifted.psi > 0.25 and shifted.ks > 0.9
    assert not shifted.drift and shifted.flagged_share == 0.0
    assert set(shifted.to_dict()) >= {"drift", "flagged_share", "window", "target", "psi", "ks"}


def test_the_target_is_the_share_the_threshold_flags_on_good_images():
    rng = np.random.default_rng(1)
    many = rng.normal(100, 10, 999)
    c = ConformalCalibrator(0.01).fit(many)
    assert expected_false_alarm_rate(0.01, many, c.threshold_) == pytest.approx(0.01)
    few = rng.normal(100, 10, 12)                      # 1 % is not reachable: the threshold is the largest score
    assert expected_false_alarm_rate(0.01, few, few.max()) == pytest.approx(1 / 13)
    assert expected_false_alarm_rate(0.01, few, few.max() + 5.0) == pytest.approx(1 / 13)
    watch = DriftWatch(0.01, window=50, min_images=50)
    first_warning(watch, [True] * 50)
    line = warning_message(watch.state())
    assert WARNING.fullmatch(line) and "50 of the last 50 images flagged (100.0 %, target 1.0 %)" in line


# ---- end to end: linewatch inspect with the small bundle

def good_images(category: Path) -> list[Path]:
    return sorted(p for part in ("train", "validation", "test/good") for p in (category / part).rglob("*.png"))


SHIFTS = {                                           # a new lamp and a noisy camera: the bundle flags them all
    "bright": lambda x, rng: np.clip(x.astype(np.int16) * 2 + 40, 0, 255).astype(np.uint8),
    "noise": lambda x, rng: np.clip(x + rng.normal(0, 40, x.shape), 0, 255).astype(np.uint8),
}


def write_stream(folder: Path, category: Path, n_good: int, n_shifted: int, n_good_after: int = 0) -> None:
    """``folder/a_*``: good images, ``b_*``: shifted copies of them, ``c_*``: good again (sorted = stream order)."""
    folder.mkdir(parents=True)
    good = good_images(category)
    rng = np.random.default_rng(0)
    for i in range(n_good):
        (folder / f"a_{i:03d}.png").write_bytes(good[i % len(good)].read_bytes())
    for i in range(n_shifted):
        name, shift = list(SHIFTS.items())[i % len(SHIFTS)]
        cv2.imwrite(str(folder / f"b_{i:03d}_{name}.png"), shift(cv2.imread(str(good[i % len(good)])), rng))
    for i in range(n_good_after):
        (folder / f"c_{i:03d}.png").write_bytes(good[(i + 7) % len(good)].read_bytes())


def rule_holds(recs: list[dict], i: int, target: float, window: int = 200) -> bool:
    """The warning rule, checked independently on the records up to and including ``recs[i]``."""
    last = [r["anomalous"] for r in recs[max(0, i + 1 - window):i + 1]]
    k, n = sum(last), len(last)
    return n >= min(50, window) and k / n >= 5 * target and binomial_tail(k, n, target) < 1e-3


def inspect(bundle, source, out, capsys, *extra) -> tuple[int, dict, str, list[dict]]:
    rc = main(["inspect", "--bundle", str(bundle), "--source", str(source), "--out", str(out), "--threads", "1",
               "--no-heatmaps", *extra])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err, read_results(Path(out) / "results.jsonl")


def test_inspect_good_images_never_warn(small_bundle, small_category, tmp_path, capsys):
    write_stream(tmp_path / "good", small_category, n_good=120, n_shifted=0)
    rc, summary, err, recs = inspect(small_bundle, tmp_path / "good", tmp_path / "out", capsys)
    assert rc == 0 and len(recs) == 120
    assert "warning: drift" not in err and "drift cleared" not in err
    assert [r["drift"] for r in recs] == [False] * 120
    assert summary["drift_warnings"] == 0 and summary["drift"]["drift"] is False
    assert summary["drift"]["window"] == 120 and summary["drift"]["flagged_share"] < 0.1
    # the small bundle has 12 calibration images: its threshold flags ~1/13 of good images, not 1 %
    assert summary["drift"]["target"] == pytest.approx(1 / 13)
    assert "measured against 7.7 % flagged, not the bundle's 1 % target" in err


def test_inspect_warns_when_production_shifts_and_a_resumed_run_keeps_the_window(small_bundle, small_category,
                                                                                   tmp_path, capsys):
    write_stream(tmp_path / "line", small_category, n_good=60, n_shifted=90)
    rc, summary, err, recs = inspect(small_bundle, tmp_path / "line", tmp_path / "out", capsys, "--max-images", "110")
    assert rc == 0 and len(recs) == 110
    warnings = [WARNING.fullmatch(line) for line in err.splitlines() if "warning: drift" in line]
    assert len(warnings) == 1 and warnings[0], err
    k, n, share, target = warnings[0].groups()
    assert int(n) >= 60 and int(k) / int(n) >= 5 / 13 and target == "7.7"
    drift = [r["drift"] for r in recs]
    on = drift.index(True)
    assert 60 <= on < 110 and all(drift[on:]) and not any(drift[:on])        # the good images never warned
    assert all(Path(r["source"]).name.startswith("b_") and r["anomalous"] for r in recs[60:])
    assert rule_holds(recs, on, 1 / 13) and not rule_holds(recs, on - 1, 1 / 13)
    assert (int(k), int(n)) == (sum(r["anomalous"] for r in recs[:on + 1]), on + 1)
    assert summary["drift_warnings"] == 1 and summary["drift"]["drift"] is True
    assert summary["drift"]["psi"] > 0.25

    rc, again, err, recs = inspect(small_bundle, tmp_path / "line", tmp_path / "out", capsys)
    assert rc == 0 and again["inspected"] == 40 and again["skipped_already_recorded"] == 110
    assert len([line for line in err.splitlines() if WARNING.fullmatch(line)]) == 1    # still drifting: said again
    assert all(r["drift"] for r in recs[110:]) and again["drift_warnings"] == 1
    rc, whole, _, _ = inspect(small_bundle, tmp_path / "line", tmp_path / "whole", capsys)
    assert again["drift"] == pytest.approx(whole["drift"])                     # as if never interrupted


def test_inspect_clears_the_warning_and_can_be_turned_off(small_bundle, small_category, tmp_path, capsys):
    write_stream(tmp_path / "line", small_category, n_good=20, n_shifted=20, n_good_after=40)
    rc, summary, err, recs = inspect(small_bundle, tmp_path / "line", tmp_path / "out", capsys, "--drift-window", "20")
    drift = [r["drift"] for r in recs]
    on, off = drift.index(True), drift.index(False, drift.index(True))
    assert 20 <= on < 40 <= off < 80 and not any(drift[off:])
    assert rule_holds(recs, on, 1 / 13, window=20) and not rule_holds(recs, on - 1, 1 / 13, window=20)
    # cleared once fewer than 2 x 1/13 of the last 20 (3 or fewer) are flagged
    assert sum(r["anomalous"] for r in recs[off - 19:off + 1]) <= 3 < sum(r["anomalous"] for r in recs[off - 20:off])
    assert err.count("warning: drift") == 1 and err.count("drift cleared: ") == 1
    assert summary["drift_warnings"] == 1 and summary["drift"]["drift"] is False

    rc, summary, err, recs = inspect(small_bundle, tmp_path / "line", tmp_path / "off", capsys, "--drift-window", "0")
    assert rc == 0 and "drift" not in err and summary["drift"] is None and summary["drift_warnings"] == 0
    assert all(r["drift"] is None for r in recs)
    with pytest.raises(SystemExit):
        main(["inspect", "--bundle", str(small_bundle), "--source", str(tmp_path / "line"), "--out", str(tmp_path),
              "--drift-window", "-1"])
    assert watch_bundle(Bundle.load(small_bundle).manifest, 0) is None
