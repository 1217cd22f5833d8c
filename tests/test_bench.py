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


@pytest.mark.slow
def test_suite_bench_quick_mode_writes_every_row_and_the_done_checks(tmp_path):
    md = tmp_path / "out" / "suite.md"
    proc = subprocess.run([sys.executable, str(BENCH / "suite.py"), "--quick", "--no-peers", "--only", "brick",
                           "perforated", "--data-root", str(tmp_path / "data"), "--out-md", str(md)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = md.read_text()
    assert "QUICK" in text.splitlines()[0]
    auroc_section = text.split("## Image AUROC")[1].split("\n## ")[0]
    sys.path.insert(0, str(BENCH))
    from suite_report import ORDER
    table_rows = [line for line in auroc_section.splitlines() if line.startswith("| ")]
    for method in ORDER:
        assert any(method in line for line in table_rows), method
    assert "brick (dev)" in auroc_section and "perforated (confirm)" in auroc_section
    checks = text.split("## Done-checks")[1]
    assert "| brick | dev |" in checks and "| perforated | confirm |" in checks and "Confirm mean" in checks
    import csv
    rows = list(csv.DictReader(open(md.with_suffix(".csv"))))
    assert {(r["method"], r["category"]) for r in rows} == {(m, c) for m in ORDER for c in ("brick", "perforated")}
    assert all(0.0 <= float(r["image_auroc"]) <= 1.0 for r in rows)
    default = next(r for r in rows if r["method"] == ORDER[0] and r["category"] == "brick")
    assert float(default["image_auroc"]) > 0.7 and 0.0 <= float(default["far_shifted_val"]) <= 1.0
