"""bench/latency.py: its multiply-add count, and (slow) its --quick run end to end."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_latency():
    spec = importlib.util.spec_from_file_location("latency_bench", BENCH / "latency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_count_macs_counts_convolutions_and_matrix_products(tmp_path):
    """Conv 3->8, 3x3, stride 2 on 16x16 -> 8x8 output: 8*8*8 * 3*3*3 MACs; grouped (depthwise) conv:
    8*8*8 * 1*3*3; then a (64, 8) @ (8, 5) MatMul: 64*8*5 MACs. The batch axis is dynamic (counted as 1)."""
    w1 = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w2")
    m = numpy_helper.from_array(np.zeros((8, 5), np.float32), "m")
    shape = numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c2"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["z"]),
             helper.make_node("MatMul", ["z", "m"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2, m, shape])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    got = load_latency().count_macs(str(path))
    assert got["unknown"] == []
    assert got["by_op"] == {"Conv": 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9, "MatMul": 64 * 8 * 5}
    assert got["macs"] == sum(got["by_op"].values()) and got["int8_macs"] == 0


@pytest.mark.slow
def test_latency_bench_quick_mode_writes_its_tables(tmp_path):
    env = dict(os.environ, LINEWATCH_LATENCY_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "latency.md"
    proc = subprocess.run([sys.executable, str(BENCH / "latency.py"), "--quick", "--no-peers", "--out", str(out),
                           "--json", str(tmp_path / "latency.json")],
                          capture_output=True, text=True, timeout=3600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = out.read_text()
    for heading in ("## Targets", "## Batch-1 latency", "## Throughput", "## Cold start", "## The floor",
                    "## Fast path"):
        assert heading in md
    raw = json.loads((tmp_path / "latency.json").read_text())
    b1 = raw["latency"]["linewatch fp32|1"]["e2e"]["b1"]
    assert 0 < b1["p50"] <= b1["p99"]
    assert raw["floor"]["graphs"]["linewatch fp32"]["macs"] > 1e8
