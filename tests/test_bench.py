"""The benchmark scripts still run (their --quick modes write no results). Slow: `make test-all`."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ablation.py", "few_shot.py"])
def test_bench_quick_mode_runs(script, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--textures", "brick",
                           "--data", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AUROC" in proc.stdout
