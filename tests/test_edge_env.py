"""The edge environment of ``Dockerfile.edge``, built without a Docker engine.

``docker/install-runtime.sh`` is the one install recipe: the Dockerfile's builder stage runs it, and
this test runs it too, into a fresh virtual env made by the same Python minor version (3.11). The env
must hold no torch and no training code, run ``linewatch inspect`` on fp32 and int8 bundles, and
stay within the issue's 350 MB. Needs the package registry (pip), like the Docker build.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_ENV_MB = 350


def test_dockerfile_builds_the_edge_env_with_the_shared_recipe():
    text = (ROOT / "Dockerfile.edge").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(stages) == 2 and re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.M)
    assert "sh /src/docker/install-runtime.sh /opt/linewatch /src" in text           # the shared recipe
    assert "COPY --from=builder /opt/linewatch /opt/linewatch" in text
    assert re.search(r"^USER 10001:10001$", text, flags=re.M)                         # not root
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)
    assert 'ENTRYPOINT ["linewatch"]' in text
    steps = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not [line for line in steps if "torch" in line.lower()]
    assert not [line for line in steps if re.search(r"amd64|x86_64|aarch64|arm64", line)]   # no arch-specific steps
    recipe = (ROOT / "docker" / "install-runtime.sh").read_text()
    assert 'install -r "$SRC/requirements-runtime.txt"' in recipe and "--no-deps" in recipe
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = {file = ["requirements-runtime.txt"]}' in pyproject        # one requirement set
    assert "torch" not in (ROOT / "requirements-runtime.txt").read_text()


def _du_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory):
    venv = tmp_path_factory.mktemp("edge") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = sys._base_executable          # the interpreter behind the test's venv (3.11)
    proc = subprocess.run(["sh", str(ROOT / "docker" / "install-runtime.sh"), str(venv), str(ROOT)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(venv.parent))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


def run_in(venv: Path, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd or str(venv.parent))


@pytest.mark.slow
def test_edge_env_has_no_torch_and_is_small(edge_env):
    for module in ("torch", "onnx", "sklearn", "yaml", "linewatch.training", "linewatch.export", "linewatch.jobs"):
        p = run_in(edge_env, "python", "-c", f"import {module}")
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, module
    p = run_in(edge_env, "python", "-c", "import linewatch.runtime.inspector, numpy, cv2, onnxruntime")
    assert p.returncode == 0, p.stderr                 # what the Dockerfile's HEALTHCHECK runs
    size_mb = _du_bytes(edge_env) / 1e6
    print(f"\nedge runtime environment: {size_mb:.0f} MB ({edge_env})")
    assert size_mb <= MAX_ENV_MB


@pytest.mark.slow
def test_edge_env_inspects_fp32_and_int8_bundles(edge_env, small_bundle, small_category, tmp_path, monkeypatch):
    from linewatch.export import int8_bundle
    from linewatch.jobs.export import run_export
    from linewatch.training.checkpoint import default_checkpoint_path

    monkeypatch.setattr(int8_bundle, "MIN_SPEARMAN", -1.0)     # the 64-px model; see test_export_int8.py
    monkeypatch.setattr(int8_bundle, "MAX_AUROC_DROP", 1.0)
    run_export(default_checkpoint_path(small_bundle), tmp_path / "int8", int8=True)

    assert run_in(edge_env, "linewatch", "--help").returncode == 0
    assert "linewatch 0.1.0" in run_in(edge_env, "linewatch", "--version").stdout
    p = run_in(edge_env, "linewatch", "train", "--data", str(small_category), "--out", str(tmp_path / "t"))
    assert p.returncode == 1 and "only `inspect`" in p.stderr                       # a message, not a traceback
    sources = sorted((small_category / "test").rglob("*.png"))[:6]
    src = tmp_path / "src"
    src.mkdir()
    for s in sources:
        (src / s.name.replace(".png", f"_{s.parent.name}.png")).write_bytes(s.read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    for name, bundle in (("fp32", small_bundle), ("int8", tmp_path / "int8")):
        out = tmp_path / f"out-{name}"
        p = run_in(edge_env, "linewatch", "inspect", "--bundle", str(bundle), "--source", str(src),
                   "--out", str(out), "--threads", "1")
        assert p.returncode == 0, p.stderr
        records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert len(records) == len(sources) + 1
        ok = [r for r in records if r["error"] is None]
        assert len(ok) == len(sources) and all(isinstance(r["score"], float) and 0 < r["p_value"] <= 1 for r in ok)
        assert [r for r in records if r["error"]][0]["source"].endswith("broken.png")


@pytest.mark.slow
def test_edge_env_serves_a_bundle(edge_env, small_bundle, small_category):
    """`linewatch serve` in the edge env: listens, answers a verdict, exits 0 on SIGTERM."""
    import http.client
    import signal

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen([str(edge_env / "bin" / "linewatch"), "serve", "--bundle", str(small_bundle), "--port", "0",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(edge_env.parent))
    try:
        hello = json.loads(proc.stdout.readline() or "{}")
        assert "listening" in hello, proc.stderr.read() if proc.poll() is not None else hello
        host, port = hello["listening"][len("http://"):].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        image = sorted((small_category / "test").rglob("*.png"))[0].read_bytes()
        conn.request("POST", "/v1/inspect", image, {"Content-Type": "image/png"})
        r = conn.getresponse()
        verdict = json.loads(r.read())
        assert r.status == 200 and isinstance(verdict["score"], float) and verdict["bundle"] == hello["bundle"]
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
