"""The benchmark scripts still run (their --quick modes write no results). Slow: `make test-all`."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ablation.py", "few_shot.py", "adapt.py"])
def test_bench_quick_mode_runs(script, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--textures", "brick",
                           "--data", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AUROC" in proc.stdout


@pytest.mark.slow
def test_accuracy_bench_quick_mode_writes_its_tables(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "accuracy.py"), "--quick", "--no-peers", "--threads", "1",
                           "--data", str(tmp_path / "data"), "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (out / "accuracy.md").read_text()
    sys.path.insert(0, str(BENCH))
    from accuracy_report import DEFAULT
    for method in (DEFAULT, "kNN patch distance", "pixel OneClassSVM", "pixel PCA"):
        assert method in md
    import csv
    rows = list(csv.DictReader(open(out / "accuracy.csv")))
    mixed = [r for r in rows if r["subset"] == "mixed" and r["case"] == "brick"]
    assert len(mixed) >= 10 and all(0.0 <= float(r["image_auroc"]) <= 1.0 for r in mixed)
    default = next(r for r in mixed if r["method"] == DEFAULT)
    assert float(default["image_auroc"]) > 0.75 and 0.0 <= float(default["false_alarm_rate"]) <= 1.0


@pytest.mark.slow
def test_augment_bench_quick_mode_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "augment.py"), "--quick", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distinct nearest" in proc.stdout and "Decoder fidelity" in proc.stdout
