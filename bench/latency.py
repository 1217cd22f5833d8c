"""Latency, throughput, cold start, memory and size of the edge runtime, next to its peers and the hardware floor.

Writes ``bench/results/latency.md``. At 224 x 224, fp32 and int8 bundles:

* batch-1 latency p50 / p99 with 1 and with 2 threads, for the onnxruntime session alone and end to
  end (PNG file -> bytes -> decode -> preprocess -> session -> p-value -> JSON record written and
  flushed, the path ``linewatch inspect`` takes for an image that is not flagged);
* throughput at batch 8 and 32 (session alone, and the inspection pipeline);
* cold start (``linewatch inspect`` on one image in a fresh process, until it exits after writing the
  verdict), peak RSS (``wait4`` of that process, and of one over the whole test folder), bundle size;
* in the same run and on the same images: the same scoring graph in torch eager, and anomalib's
  PaDiM and PatchCore exported to ONNX and run in onnxruntime (fitted and exported in the anomalib
  peer env by ``bench/peers/export_onnx.py``; skipped with a note when that env is absent);
* the floor: multiply-adds of each graph counted from the ONNX file (Conv / Gemm / MatMul with shape
  inference) divided by the peak GEMM rate a measured float32 matrix product reaches on this CPU;
* the fast-path profile: each step of the per-image path, before and after the changes of issue 5
  item 2, measured in the same process.

    python bench/latency.py [--quick] [--bundle B] [--int8-bundle B8] [--no-peers] [--out FILE]

Without ``--bundle`` it trains the default 224-px configuration on the demo brick data (cached under
``/tmp/linewatch-latency``; ``--bundle`` is then a cached bundle with a ``.ckpt`` beside it). Without
``--int8-bundle`` it writes one with ``linewatch.jobs.export`` from that checkpoint when that job
exists; otherwise the int8 rows say "not available" and why.

Every measurement runs in its own subprocess (``--worker``), pinned to one CPU for 1-thread
configurations and with OpenMP / BLAS / onnxruntime / torch threads set, so one configuration does
not disturb another. Latencies are p50 / p99 over many iterations, repeated; the table gives the
median over the repeats. ``--quick`` runs few iterations and writes its report to the cache folder
instead (a smoke test; nothing in ``bench/results`` changes). ``LINEWATCH_LATENCY_CACHE`` moves the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
CACHE = Path(os.environ.get("LINEWATCH_LATENCY_CACHE", "/tmp/linewatch-latency"))
PEER_PY = HERE / "peers" / ".venv" / "bin" / "python"
SIZE = 224
TARGETS = {"e2e_fp32_ms": 8.0, "e2e_int8_ms": 5.0, "throughput_2t": 250.0, "cold_s": 1.0, "rss_mb": 200.0,
           "int8_mb": 5.0}
# iterations per repeat and repeats, per kind of measurement
PLAN = {
    "full": {"b1": (300, 5), "slow_b1": (60, 3), "tp_s": 4.0, "cold": 7, "profile": (200, 5)},
    "quick": {"b1": (25, 2), "slow_b1": (8, 2), "tp_s": 0.5, "cold": 3, "profile": (20, 2)},
}
DEMO = {"n_train": 60, "n_test_good": 20, "n_test_per_defect": 4, "n_validation": 100}
# Smaller graphs measured beside the default (fp32, same data): label -> configuration overrides. Their
# accuracy is in bench/results/accuracy.md under the same change.
VARIANTS = {"linewatch fp32, Lite0 11 blocks (earlier default)": {"model": {"lite0_blocks": 11}}}


# ==================================================================================================
# Workers: each runs in a fresh subprocess and prints one ``RESULT {json}`` line.


def _stats(times_s: list[float]) -> dict:
    import numpy as np
    t = 1000.0 * np.asarray(times_s)
    return {"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "n": int(t.size)}


def _repeat(fn, n: int, repeats: int, warmup: int = 5) -> dict:
    """``repeats`` x (warm-up, then ``n`` timed calls of ``fn(i)``) -> medians over the repeats of p50 / p99."""
    import numpy as np
    per = []
    k = 0
    for _ in range(repeats):
        for _ in range(warmup):
            fn(k)
            k += 1
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(k)
            ts.append(time.perf_counter() - t0)
            k += 1
        per.append(_stats(ts))
    return {"p50": float(np.median([p["p50"] for p in per])), "p99": float(np.median([p["p99"] for p in per])),
            "p50_repeats": [round(p["p50"], 3) for p in per], "n": n, "repeats": repeats}


def _throughput(fn, batch: int, seconds: float, repeats: int = 3) -> dict:
    """Images per second of ``fn()`` (one batch per call): median over ``repeats`` windows of ``seconds``."""
    import numpy as np
    fn()
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 2:
                break
        rates.append(batch * n / dt)
    return {"images_per_s": float(np.median(rates)), "repeats": [round(r, 1) for r in rates]}


def _test_pngs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "test").rglob("*.png"))


def _anomalib_input(paths: list[Path], size: int):
    """float32 RGB in [0, 1], (N, 3, size, size): what anomalib's exported graphs take."""
    import cv2
    import numpy as np
    out = []
    for p in paths:
        img = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out.append(np.transpose(img.astype(np.float32) / 255.0, (2, 0, 1)))
    return np.ascontiguousarray(np.stack(out))


def _ort_session(path: str, threads: int):
    import onnxruntime as ort
    from linewatch.runtime.inspector import session_options
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def _batch(xs, b: int):
    import numpy as np
    idx = [i % len(xs) for i in range(b)]
    return np.ascontiguousarray(xs[idx])


def w_session(job: dict) -> dict:
    """onnxruntime session alone: batch-1 latency and batch throughputs."""
    import numpy as np
    paths = _test_pngs(Path(job["data"]))
    if job["model"] == "linewatch":
        from linewatch.runtime.inspector import Inspector
        from linewatch.runtime.preprocess import read_image, preprocess
        ins = Inspector(job["bundle"], threads=job["threads"])
        sess, name = ins.session, ins.bundle.manifest.model.input_name
        xs = np.stack([preprocess(read_image(p), ins.spec) for p in paths])
    else:
        sess = _ort_session(job["onnx"], job["threads"])
        name = sess.get_inputs()[0].name
        xs = _anomalib_input(paths, job["size"])
    out = {"threads": job["threads"]}
    singles = [np.ascontiguousarray(xs[i:i + 1]) for i in range(len(xs))]
    n, r = job["b1"]
    out["b1"] = _repeat(lambda i: sess.run(None, {name: singles[i % len(singles)]}), n, r)
    for b in job.get("batches", []):
        xb = _batch(xs, b)
        out[f"b{b}_tp"] = _throughput(lambda: sess.run(None, {name: xb}), b, job["tp_s"])
    w = job.get("dp_workers", 1)
    if w > 1:                     # data parallel: w concurrent runs of a 1-thread session, one per Python thread
        from concurrent.futures import ThreadPoolExecutor
        one = _ort_session(job["onnx"], 1) if job["model"] != "linewatch" else ins._new_session(1)
        pool = ThreadPoolExecutor(w)
        for b in job.get("dp_batches", []):
            xb = _batch(xs, b)
            out[f"b{b}_dp_tp"] = _throughput(lambda: list(pool.map(lambda _: one.run(None, {name: xb}), range(w))),
                                             w * b, job["tp_s"])
        pool.shutdown()
    return out


def w_e2e(job: dict) -> dict:
    """End to end, one image at a time: file -> verdict record written and flushed."""
    import itertools
    import numpy as np
    paths = _test_pngs(Path(job["data"]))
    log = open(Path(job["tmp"]) / f"e2e-{os.getpid()}.jsonl", "a")
    n, r = job["b1"]
    out = {"threads": job["threads"]}
    if job["model"] == "linewatch":
        from linewatch.runtime.inspector import Inspector
        ins = Inspector(job["bundle"], threads=job["threads"])
        gen = ins.inspect_paths(itertools.cycle(paths), batch_size=1)

        def one(_i):
            v, _img, _map = next(gen)
            rec = v.to_dict()
            rec["heatmap"] = None
            log.write(json.dumps(rec) + "\n")
            log.flush()
        out["b1"] = _repeat(one, n, r)
        for b in job.get("batches", []):
            gen_b = ins.inspect_paths(itertools.cycle(paths), batch_size=b)

            def batch_of(b=b, gen_b=gen_b):
                for _ in range(b):
                    v, _img, _map = next(gen_b)
                    rec = v.to_dict()
                    rec["heatmap"] = None
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            out[f"b{b}_tp"] = _throughput(batch_of, b, job["tp_s"])
        w = job.get("dp_workers", 1)
        for b in job.get("dp_batches", []) if w > 1 else []:
            gen_w = ins.inspect_paths(itertools.cycle(paths), batch_size=b, workers=w)

            def chunk_of(b=b, gen_w=gen_w, k=8 * w):
                for _ in range(k * b):
                    v, _img, _map = next(gen_w)
                    rec = v.to_dict()
                    rec["heatmap"] = None
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
            out[f"b{b}_dp_tp"] = _throughput(chunk_of, 8 * w * b, job["tp_s"])
    elif job["model"] == "torch":
        import torch
        torch.set_num_threads(job["threads"])
        from linewatch.runtime.preprocess import decode_image, preprocess
        from linewatch.training.checkpoint import load_checkpoint
        det = load_checkpoint(job["ckpt"]).detector
        scorer = det.scorer.eval()
        thr = float(det.calibrator.threshold_)

        def one(i):
            p = paths[i % len(paths)]
            x = preprocess(decode_image(p.read_bytes(), source=str(p)), det.input_spec)[None]
            with torch.inference_mode():
                s = float(scorer(torch.from_numpy(x))[0][0])
            p_val = float(det.calibrator.p_values(np.array([s]))[0])
            log.write(json.dumps({"source": str(p), "score": s, "anomalous": s > thr, "p_value": p_val}) + "\n")
            log.flush()
        out["b1"] = _repeat(one, n, r)
    else:                                                    # anomalib ONNX: its own input convention
        import cv2
        sess = _ort_session(job["onnx"], job["threads"])
        name, size = sess.get_inputs()[0].name, job["size"]
        outs = [o.name for o in sess.get_outputs()]

        def one(i):
            p = paths[i % len(paths)]
            img = cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if img.shape[:2] != (size, size):
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            x = np.ascontiguousarray(np.transpose(img.astype(np.float32) / 255.0, (2, 0, 1))[None])
            res = dict(zip(outs, sess.run(None, {name: x})))
            s = float(np.asarray(res["pred_score"]).reshape(-1)[0])
            log.write(json.dumps({"source": str(p), "score": s, "anomalous": s > 0.5}) + "\n")
            log.flush()
        out["b1"] = _repeat(one, n, r)
    log.close()
    return out


def w_torch(job: dict) -> dict:
    """The same scoring graph (the checkpoint's torch module) in torch eager."""
    import numpy as np
    import torch
    torch.set_num_threads(job["threads"])
    from linewatch.runtime.preprocess import read_image, preprocess
    from linewatch.training.checkpoint import load_checkpoint
    det = load_checkpoint(job["ckpt"]).detector
    scorer = det.scorer.eval()
    xs = torch.from_numpy(np.stack([preprocess(read_image(p), det.input_spec) for p in _test_pngs(Path(job["data"]))]))
    singles = [xs[i:i + 1].contiguous() for i in range(len(xs))]
    out = {"threads": job["threads"],
           "state_bytes": sum(t.numel() * t.element_size() for t in scorer.state_dict().values())}
    n, r = job["b1"]
    with torch.inference_mode():
        out["b1"] = _repeat(lambda i: scorer(singles[i % len(singles)]), n, r, warmup=3)
        for b in job.get("batches", []):
            xb = torch.from_numpy(_batch(xs.numpy(), b))
            out[f"b{b}_tp"] = _throughput(lambda: scorer(xb), b, job["tp_s"], repeats=2)
    return out


def count_macs(path: str) -> dict:
    """Multiply-adds of Conv / Gemm / MatMul nodes (and their integer forms) for batch 1, from shape inference.

    ``int8`` counts the Conv / MatMul nodes whose weight comes from a DequantizeLinear (QDQ graphs),
    which onnxruntime runs as integer kernels.
    """
    import numpy as np
    import onnx
    from onnx import shape_inference
    m = onnx.load(path)
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].Clear()
            dims[0].dim_value = 1
    m = shape_inference.infer_shapes(m, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for t in m.graph.initializer:
        shapes[t.name] = list(t.dims)
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:                                   # Constant nodes' shapes
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = list(a.t.dims)

    def known(s):
        return s is not None and all(isinstance(d, int) and d > 0 for d in s)

    total = int8 = 0
    unknown: list[str] = []
    by_op: dict[str, int] = {}
    _fill_runtime_shapes(m, shapes, known)
    for n in m.graph.node:
        op = n.op_type
        macs = None
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = n.input[3] if op == "QLinearConv" else n.input[1]
            w, y = shapes.get(w_name), shapes.get(n.output[0])
            if known(w) and known(y):
                macs = int(np.prod(y)) * int(np.prod(w[1:]))
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
            a, y = shapes.get(n.input[0]), shapes.get(n.output[0])
            if known(a) and known(y):
                k = a[-1]
                if op == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                    k = a[0]
                macs = int(np.prod(y)) * int(k)
        else:
            continue
        if macs is None:
            unknown.append(f"{op} {n.name}")
            continue
        total += macs
        by_op[op] = by_op.get(op, 0) + macs
        w_src = producer.get(n.input[1]) if len(n.input) > 1 else None
        if op in ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul") or \
                (w_src is not None and w_src.op_type == "DequantizeLinear"):
            int8 += macs
    return {"macs": total, "int8_macs": int8, "by_op": by_op, "unknown": unknown}


_MAC_OPS = {"Conv": (1,), "ConvInteger": (1,), "QLinearConv": (3,), "Gemm": (0, 1), "MatMul": (0, 1),
            "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "FusedMatMul": (0, 1)}


def _fill_runtime_shapes(m, shapes: dict, known) -> None:
    """Shapes that static inference left open (data-dependent Resize / Pad, dynamic slices): read them off
    one onnxruntime run on a batch-1 input, with the tensors in question added as graph outputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    want = set()
    for n in m.graph.node:
        if n.op_type in _MAC_OPS:
            for i in (*_MAC_OPS[n.op_type], None):
                name = n.output[0] if i is None else n.input[i]
                if not known(shapes.get(name)):
                    want.add(name)
    if not want:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    existing = {o.name for o in probe.graph.output}
    for name in sorted(want - existing):
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    try:
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(probe.SerializeToString(), o, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape]).astype(np.float32)
        names = [o_.name for o_ in sess.get_outputs()]
        for name, val in zip(names, sess.run(names, {inp.name: x})):
            if name in want:
                shapes[name] = list(np.asarray(val).shape)
    except Exception:  # noqa: BLE001  (the node then stays "unknown" in the count)
        return


def w_floor(job: dict) -> dict:
    """MACs of each graph, and the peak GEMM rate of this CPU (1 thread) in onnxruntime and numpy."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    out = {"graphs": {k: count_macs(v) for k, v in job["graphs"].items()}}

    def ort_gemm(n: int, k: int, m: int, integer: bool = False) -> float:
        if integer:
            a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, k])
            b = helper.make_tensor_value_info("b", TensorProto.INT8, [k, m])
            y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, m])
            node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        else:
            a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, k])
            b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, m])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, m])
            node = helper.make_node("MatMul", ["a", "b"], ["y"])
        g = helper.make_graph([node], "gemm", [a, b], [y])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        sess = _ort_session_bytes(model.SerializeToString(), 1)
        rng = np.random.default_rng(0)
        if integer:
            feeds = {"a": rng.integers(0, 255, (n, k)).astype(np.uint8), "b": rng.integers(-127, 127, (k, m)).astype(np.int8)}
        else:
            feeds = {"a": rng.standard_normal((n, k)).astype(np.float32), "b": rng.standard_normal((k, m)).astype(np.float32)}
        return _gflops(lambda: sess.run(None, feeds), n * k * m)

    def _gflops(fn, macs: int) -> float:
        fn()
        best = []
        for _ in range(3):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < job["gemm_s"] or reps < 2:
                fn()
                reps += 1
            best.append(2 * macs * reps / (time.perf_counter() - t0) / 1e9)
        return float(max(best))

    sizes = [(1024, 1024, 1024), (2048, 2048, 2048)] if not job["quick"] else [(1024, 1024, 1024)]
    out["ort_fp32_gflops"] = {f"{n}x{k}x{m}": ort_gemm(n, k, m) for n, k, m in sizes}
    out["ort_int8_gops"] = {f"{n}x{k}x{m}": ort_gemm(n, k, m, integer=True) for n, k, m in sizes}
    rng = np.random.default_rng(0)
    npres = {}
    for n, k, m in sizes:
        a, b = rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((k, m)).astype(np.float32)
        npres[f"{n}x{k}x{m}"] = _gflops(lambda: a @ b, n * k * m)
    out["numpy_fp32_gflops"] = npres
    d = job.get("density_shape")
    if d:
        out["density_gemm_gflops"] = ort_gemm(*d)
        out["density_shape"] = d
    try:
        import numpy._core._multiarray_umath as mu                           # noqa: F401
        cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
        out["numpy_blas"] = (cfg.get("Build Dependencies", {}).get("blas", {}) or {}).get("name", "?")
    except Exception:  # noqa: BLE001
        out["numpy_blas"] = "?"
    out["onnx_version"], out["ort_version"] = onnx.__version__, ort.__version__
    return out


def _ort_session_bytes(model_bytes: bytes, threads: int):
    import onnxruntime as ort
    from linewatch.runtime.inspector import session_options
    return ort.InferenceSession(model_bytes, session_options(threads), providers=["CPUExecutionProvider"])


# ---- the fast-path profile: the per-image steps before and after, same process, 1 thread


def preprocess_before(img, spec):
    """runtime/preprocess.py's ``preprocess`` before issue 5 (HWC broadcasting, then a transpose copy)."""
    import numpy as np
    from linewatch.runtime.preprocess import convert_channels, resize_to, to_unit_float
    x = to_unit_float(convert_channels(img, spec.color_order))
    x = resize_to(x, spec.height, spec.width)
    if x.ndim == 2:
        x = x[:, :, None]
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = (1.0 / np.asarray(spec.std, dtype=np.float32)).astype(np.float32)
    return np.ascontiguousarray(np.transpose((x - mean) * inv_std, (2, 0, 1)), dtype=np.float32)


def overlay_before(image_bgr, patch_map, low, threshold, strength=0.6):
    """runtime/heatmap.py's ``overlay`` before issue 5 (float blend broadcast over (H, W, 3))."""
    import cv2
    import numpy as np
    h, w = image_bgr.shape[:2]
    s = cv2.resize(patch_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    v = np.clip((s - low) / max(threshold - low, 1e-6), 0.0, 1.0)
    colour = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    a = (strength * v)[:, :, None]
    out = (image_bgr.astype(np.float32) * (1.0 - a) + colour * a).astype(np.uint8)
    contours, _ = cv2.findContours((s >= threshold).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def w_profile(job: dict) -> dict:
    """Each step of the per-image path, before and after, interleaved in one process (1 thread)."""
    import cv2
    import numpy as np
    import onnxruntime as ort
    from linewatch.runtime.heatmap import overlay
    from linewatch.runtime.inspector import Inspector, session_options
    from linewatch.runtime.preprocess import decode_image, display_bgr, preprocess
    paths = _test_pngs(Path(job["data"]))
    ins = Inspector(job["bundle"], threads=1)
    spec, name = ins.spec, ins.bundle.manifest.model.input_name
    datas = [p.read_bytes() for p in paths]
    imgs = [decode_image(d) for d in datas]
    xs = [preprocess(im, spec)[None] for im in imgs]
    assert all(np.array_equal(preprocess_before(im, spec), preprocess(im, spec)) for im in imgs[:8])
    scores, maps = ins.score_batch(np.concatenate(xs[:8]))
    low, thr = ins.bundle.manifest.calibration.heatmap_low, ins.threshold
    disp = display_bgr(imgs[0])
    tmp = Path(job["tmp"])
    log = open(tmp / "profile.jsonl", "a")
    v = ins.verdicts(["x"], scores[:1], [1.0])[0]

    def write_rec(_i):
        rec = v.to_dict()
        rec["heatmap"] = None
        log.write(json.dumps(rec) + "\n")
        log.flush()

    def sess(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        o = session_options(1)
        o.graph_optimization_level = level
        return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])

    graphs = {"density before": sess(job["graph_before"]), "density after": sess(job["graph_after"])}
    levels = {"ORT_ENABLE_BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "ORT_ENABLE_EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    for lv, level in levels.items():
        graphs[lv] = sess(job["graph_after"], level)
    diff = float(np.max(np.abs(graphs["density before"].run(None, {name: np.concatenate(xs[:8])})[0]
                              - graphs["density after"].run(None, {name: np.concatenate(xs[:8])})[0])))
    heat_name = str(tmp / "heat.png")
    heat_img = overlay(disp, maps[0], low, thr)
    steps = {
        "read file": lambda i: paths[i % len(paths)].read_bytes(),
        "decode PNG (cv2.imdecode, IMREAD_UNCHANGED)": lambda i: decode_image(datas[i % len(datas)]),
        "preprocess: before": lambda i: preprocess_before(imgs[i % len(imgs)], spec),
        "preprocess: after": lambda i: preprocess(imgs[i % len(imgs)], spec),
        "session b1: density before": lambda i: graphs["density before"].run(None, {name: xs[i % len(xs)]}),
        "session b1: density after": lambda i: graphs["density after"].run(None, {name: xs[i % len(xs)]}),
        "session b1: ORT_ENABLE_BASIC": lambda i: graphs["ORT_ENABLE_BASIC"].run(None, {name: xs[i % len(xs)]}),
        "session b1: ORT_ENABLE_EXTENDED": lambda i: graphs["ORT_ENABLE_EXTENDED"].run(None, {name: xs[i % len(xs)]}),
        "p-value + verdict": lambda i: ins.verdicts(["x"], scores[:1], [1.0]),
        "JSON record written + flushed": write_rec,
        "heat map overlay: before": lambda i: overlay_before(disp, maps[0], low, thr),
        "heat map overlay: after": lambda i: overlay(disp, maps[0], low, thr),
        "heat map PNG written (cv2.imwrite)": lambda i: cv2.imwrite(heat_name, heat_img),
    }
    n, r = job["profile"]
    res = {k: [] for k in steps}
    k = 0
    for _ in range(r):                                       # interleaved: every step in every round
        for s, fn in steps.items():
            for _ in range(3):
                fn(k)
            ts = []
            for _ in range(n if not s.startswith(("session", "heat map PNG")) else max(n // 2, 5)):
                t0 = time.perf_counter()
                fn(k)
                ts.append(time.perf_counter() - t0)
                k += 1
            res[s].append(1000 * float(np.median(ts)))
    out = {"steps": {s: float(np.median(v)) for s, v in res.items()}, "rounds": {s: [round(x, 3) for x in v] for s, v in res.items()},
           "graph_score_diff": diff}
    # per-image session cost by batch size (1 thread): is batching worth it?
    xcat = np.concatenate(xs)
    bt = {}
    for b in (1, 8, 32):
        xb = _batch(xcat, b)
        g = graphs["density after"]
        bt[b] = 1000.0 / _throughput(lambda: g.run(None, {name: xb}), b, job["tp_s"])["images_per_s"]
    out["per_image_ms_by_batch"] = bt
    log.close()
    return out


def w_nodes(job: dict) -> dict:
    """onnxruntime's own per-node profile of a scoring graph, batch 1, 1 thread: where the session's time goes."""
    import collections
    import onnxruntime as ort
    from linewatch.runtime.inspector import session_options
    from linewatch.runtime.preprocess import preprocess, read_image
    from linewatch.runtime.bundle import Bundle
    b = Bundle.load(job["bundle"])
    o = session_options(1)
    o.enable_profiling = True
    o.profile_file_prefix = str(Path(job["tmp"]) / f"ortprof-{os.getpid()}")
    sess = ort.InferenceSession(str(b.file(b.manifest.model.file)), o, providers=["CPUExecutionProvider"])
    name = b.manifest.model.input_name
    xs = [preprocess(read_image(p), b.manifest.input)[None] for p in _test_pngs(Path(job["data"]))]
    n = job["n"]
    for i in range(n):
        sess.run(None, {name: xs[i % len(xs)]})
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_part: dict[str, float] = collections.defaultdict(float)
    by_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node, op, us = e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?"), e["dur"]
        part = "backbone" if "/features/" in node else "density" if "/density/" in node else "other"
        by_part[part] += us / n / 1000
        by_op[op] += us / n / 1000
    return {"by_part_ms": dict(by_part), "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "kernel_ms": float(sum(by_part.values())), "runs": n}


WORKERS = {"session": w_session, "e2e": w_e2e, "torch": w_torch, "floor": w_floor, "profile": w_profile,
           "nodes": w_nodes}


def worker_main(spec: str) -> int:
    job = json.loads(spec)
    res = WORKERS[job["kind"]](job)
    res["vmhwm_mb"] = _vmhwm_mb()
    print("RESULT " + json.dumps(res), flush=True)
    return 0


def _vmhwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# ==================================================================================================
# Orchestrator


def say(msg: str) -> None:
    print(f"[latency {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


_QUIET: list[int] = []


def quietest_cpus() -> list[int]:
    """This process's CPUs, least busy first (busy share over half a second of /proc/stat; measured once)."""
    if not _QUIET:
        def busy() -> dict[int, tuple[int, int]]:
            out = {}
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *v = line.split()
                    v = list(map(int, v))
                    out[int(name[3:])] = (sum(v) - v[3] - v[4], sum(v))       # minus idle and iowait
            return out
        try:
            a = busy()
            time.sleep(0.5)
            b = busy()
            share = {c: (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]) for c in cpus() if c in a and c in b}
            _QUIET.extend(sorted(cpus(), key=lambda c: (share.get(c, 0.0), c)))
        except (OSError, ValueError, KeyError):
            _QUIET.extend(cpus())
    return list(_QUIET)


def pin(threads: int):
    """preexec_fn: pin to the ``threads`` least busy CPUs (all of them when there are no more)."""
    chosen = quietest_cpus()[:threads] if threads < len(cpus()) else cpus()
    return lambda: os.sched_setaffinity(0, chosen)


def run_worker(job: dict, timeout: float = 1800) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, env=child_env(job.get("threads", 1)), preexec_fn=pin(job.get("threads", 1)),
                          capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"worker {job['kind']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# Peak RSS must come from the child itself: ``wait4``'s ru_maxrss of a child that a big parent forked (this
# orchestrator holds torch after training) starts at the parent's RSS, because exec() folds the forked
# image's high-water mark into it. VmHWM belongs to the exec'ed image only.
HWM_PRELUDE = """
import atexit, os, sys
def _linewatch_latency_hwm():
    try:
        with open('/proc/self/status') as f:
            kb = next(line for line in f if line.startswith('VmHWM:')).split()[1]
        with open(os.environ['LINEWATCH_LATENCY_HWM'], 'w') as f:
            f.write(kb)
    except Exception:
        pass
atexit.register(_linewatch_latency_hwm)
"""
CLI_SCRIPT = "import sys\nfrom linewatch.cli import main\nsys.argv[0] = 'linewatch'\nsys.exit(main())\n"


def python_cmd(script: str, *args: str) -> list[str]:
    """``python -c`` of ``script`` that also writes its own peak RSS (VmHWM) when it exits."""
    return [sys.executable, "-c", HWM_PRELUDE + script, *args]


def timed_process(cmd: list[str], threads: int = 1) -> tuple[float, float, int]:
    """Run ``cmd`` pinned; -> (wall seconds from spawn to exit, peak RSS MB, exit code).

    Peak RSS: the VmHWM the child wrote (commands made by :func:`python_cmd`), else ``wait4``'s ru_maxrss.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        env = child_env(threads)
        env["LINEWATCH_LATENCY_HWM"] = hwm.name
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, preexec_fn=pin(threads), stdout=subprocess.DEVNULL,
                             stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({p.returncode}): "
                               f"{err.read()[-2000:].decode(errors='replace')}")
        kb = Path(hwm.name).read_text().strip()
    return wall, (int(kb) / 1024.0 if kb else ru.ru_maxrss / 1024.0), p.returncode


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---- preparation


def prepare_data() -> Path:
    from linewatch.training.demo_data import DemoSpec, build_texture
    return build_texture("brick", CACHE / "data", DemoSpec(**DEMO))


def prepare_fp32(data: Path, given: str | None, name: str = "bundle-fp32",
                 overrides: dict | None = None) -> tuple[Path, Path | None, str]:
    """-> (fp32 bundle, its checkpoint or None, how it was obtained). ``overrides``: configuration
    changes from the default (a variant, cached under ``name``)."""
    from linewatch.runtime.bundle import Bundle
    if given:
        b = Path(given)
        ck = b.with_name(b.name + ".ckpt")
        return b, (ck if ck.is_file() else None), f"given: {b}"
    b = CACHE / name
    ck = b.with_name(b.name + ".ckpt")
    stamp = CACHE / f"{name}.source"
    src = _source_stamp() + json.dumps(overrides or {}, sort_keys=True)
    what = "default" if not overrides else json.dumps(overrides)
    if b.is_dir() and ck.is_file() and stamp.is_file() and stamp.read_text() == src:
        try:
            Bundle.load(b)
            return b, ck, f"cached {what} bundle {b}"
        except Exception:  # noqa: BLE001
            pass
    say(f"training the {what} 224-px bundle on {data} (1 thread) -> {b}")
    from linewatch.jobs.train import run_train
    from linewatch.training.config import config_from_dict
    t0 = time.perf_counter()
    run_train(data, b, config_from_dict({"threads": 1, **(overrides or {})}), lambda m: say(f"  train: {m}"),
              overwrite=True)
    stamp.write_text(src)
    if not overrides:
        (CACHE / "bundle-int8").exists() and shutil.rmtree(CACHE / "bundle-int8")
    return b, (ck if ck.is_file() else None), f"trained here in {time.perf_counter() - t0:.0f} s: {b}"


def _source_stamp() -> str:
    """Bundles are re-made when the code or the default configuration that writes them changes."""
    import hashlib
    h = hashlib.sha256()
    files = sorted((REPO / "training").rglob("*.py")) + sorted((REPO / "export").rglob("*.py")) + \
        [REPO / "configs" / "default.yaml", REPO / "jobs" / "train.py", REPO / "jobs" / "export.py"]
    for p in files:
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


def prepare_int8(fp32: Path, ckpt: Path | None, given: str | None) -> tuple[Path | None, str]:
    if given:
        return Path(given), f"given: {given}"
    b = CACHE / "bundle-int8"
    if b.is_dir():
        try:
            from linewatch.runtime.bundle import Bundle
            Bundle.load(b)
            return b, f"cached int8 bundle {b}"
        except Exception:  # noqa: BLE001
            pass
    try:
        from linewatch.jobs.export import run_export
    except ImportError as exc:
        return None, f"not available: int8 export (`linewatch export --int8`) is not in this tree ({exc})"
    if ckpt is None:
        return None, f"not available: no checkpoint next to {fp32} to export int8 from"
    say(f"exporting the int8 bundle from {ckpt} -> {b}")
    try:
        run_export(ckpt, b, int8=True, overwrite=True, progress=lambda m: say(f"  export: {m}"))
    except Exception as exc:  # noqa: BLE001  (e.g. the int8 accuracy gate refused it)
        return None, f"not available: int8 export failed: {exc}"
    return b, f"exported here with linewatch.jobs.export from {ckpt}"


def prepare_profile_graphs(ckpt: Path | None) -> dict | None:
    """The bundle's scoring graph exported twice from its checkpoint: with the density as it was before
    issue 5 (squared distances, then scale) and as it is now."""
    if ckpt is None:
        return None
    out = CACHE / "profile"
    out.mkdir(parents=True, exist_ok=True)
    before, after = out / "density_before.onnx", out / "density_after.onnx"
    stamp = out / "source"
    src = _source_stamp() + str(ckpt.stat().st_mtime)
    if before.is_file() and after.is_file() and stamp.is_file() and stamp.read_text() == src:
        return {"before": str(before), "after": str(after)}
    import torch
    from linewatch.export.onnx_export import export_scorer
    from linewatch.training import parzen
    from linewatch.training.checkpoint import load_checkpoint
    det = load_checkpoint(ckpt).detector
    spec = det.input_spec
    export_scorer(det.scorer, spec.channels, spec.height, spec.width, after)

    def forward_before(self, z: torch.Tensor) -> torch.Tensor:
        a = self.log_weights - parzen.sq_dists(z, self.bank, self.bank_sq) * (0.5 / self.bandwidth ** 2)
        return parzen._logsumexp_rows(a) + self.log_norm
    now = parzen.ParzenDensity.forward
    parzen.ParzenDensity.forward = forward_before
    try:
        export_scorer(det.scorer, spec.channels, spec.height, spec.width, before)
    finally:
        parzen.ParzenDensity.forward = now
    stamp.write_text(src)
    return {"before": str(before), "after": str(after)}


def prepare_peers(data: Path, enabled: bool) -> tuple[dict, str]:
    """-> ({model: export info}, note)."""
    if not enabled:
        return {}, "skipped (--no-peers)"
    if not PEER_PY.is_file():
        return {}, (f"skipped: the anomalib peer env ({PEER_PY.parent.parent}) is absent; "
                    "`make bench-peers-venv` builds it")
    root = CACHE / "anomalib"
    say(f"anomalib: fitting and exporting PaDiM and PatchCore in the peer env -> {root} (cached)")
    proc = subprocess.run([str(PEER_PY), str(HERE / "peers" / "export_onnx.py"), "--data", str(data),
                           "--out", str(root), "--image-size", str(SIZE), "--threads", "1"],
                          env=child_env(1), preexec_fn=pin(1), capture_output=True, text=True, timeout=3600)
    found = {}
    for m in ("padim", "patchcore"):
        f = root / m / "export.json"
        if f.is_file():
            found[m] = json.loads(f.read_text())
    if not found:
        return {}, f"skipped: the anomalib export failed: {proc.stderr[-1500:]}"
    note = "" if len(found) == 2 else f"only {', '.join(found)} exported: {proc.stderr[-800:]}"
    return found, note


# ---- the run


def measure(args) -> dict:
    plan = PLAN["quick" if args.quick else "full"]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lw-latency-", dir=CACHE))
    R: dict = {"plan": plan, "quick": args.quick, "notes": []}
    data = prepare_data()
    pngs = _test_pngs(data)
    R["images"] = {"data": str(data), "n_test_pngs": len(pngs), "size": SIZE, "spec": DEMO}
    fp32, ckpt, how = prepare_fp32(data, args.bundle)
    R["bundles"] = {"fp32": {"path": str(fp32), "how": how, "bytes": dir_bytes(fp32)}}
    int8, how8 = prepare_int8(fp32, ckpt, args.int8_bundle)
    R["bundles"]["int8"] = {"path": str(int8) if int8 else None, "how": how8,
                            "bytes": dir_bytes(int8) if int8 else None}
    say(f"fp32: {how}; int8: {how8}")
    R["bundles"]["variants"] = {}
    for label, overrides in ({} if args.no_variants else VARIANTS).items():
        slug = "-".join(f"{k}-{v}" for section in overrides.values() for k, v in section.items())
        vb, _, vhow = prepare_fp32(data, None, f"bundle-{slug}", overrides)
        R["bundles"]["variants"][label] = {"path": str(vb), "how": vhow, "bytes": dir_bytes(vb),
                                           "overrides": overrides}
    peers, peer_note = prepare_peers(data, not args.no_peers)
    R["peers"] = {"models": peers, "note": peer_note}
    graphs = prepare_profile_graphs(ckpt)

    models: dict[str, dict] = {"linewatch fp32": {"model": "linewatch", "bundle": str(fp32)}}
    if int8:
        models["linewatch int8"] = {"model": "linewatch", "bundle": str(int8)}
    for label, v in R["bundles"]["variants"].items():
        models[label] = {"model": "linewatch", "bundle": v["path"]}
    for m, info in peers.items():
        models[info["label"]] = {"model": "anomalib", "onnx": info["onnx"], "size": info["input_size"]}
    common = {"data": str(data), "tmp": str(tmp), "tp_s": plan["tp_s"], "quick": args.quick}

    # 1. session alone and end to end, batch 1, 1 and 2 threads (+ throughput at batch 8 / 32)
    R["latency"] = {}
    for label, mj in models.items():
        slow = mj["model"] == "anomalib"
        b1 = plan["slow_b1"] if slow else plan["b1"]
        for t in (1, 2):
            say(f"{label}: session and end to end, {t} thread(s)")
            dp = {"dp_workers": t, "dp_batches": [1, 8]} if t > 1 else {}
            s = run_worker({**common, **mj, **dp, "kind": "session", "threads": t, "b1": b1, "batches": [8, 32]})
            e = run_worker({**common, **mj, **dp, "kind": "e2e", "threads": t, "b1": b1,
                            "batches": [8, 32] if mj["model"] == "linewatch" else []})
            R["latency"][f"{label}|{t}"] = {"session": s, "e2e": e}
    if ckpt is not None:
        for t in (1, 2):
            say(f"torch eager: {t} thread(s)")
            s = run_worker({**common, "kind": "torch", "ckpt": str(ckpt), "threads": t, "b1": plan["slow_b1"],
                            "batches": [8, 32]})
            e = run_worker({**common, "kind": "e2e", "model": "torch", "ckpt": str(ckpt), "threads": t,
                            "b1": plan["slow_b1"]})
            R["latency"][f"torch eager (same graph)|{t}"] = {"session": s, "e2e": e}
    else:
        R["notes"].append("torch eager: no training checkpoint beside the given bundle, so no torch rows")

    # 2. cold start and peak RSS
    R["process"] = process_figures(models, ckpt, data, pngs, tmp, plan["cold"])

    # 3. floor
    say("floor: multiply-adds and peak GEMM rate")
    gr = {k: str(Path(v["bundle"]) / "model.onnx") for k, v in models.items() if v["model"] == "linewatch"}
    gr.update({k: v["onnx"] for k, v in models.items() if v["model"] == "anomalib"})
    from linewatch.runtime.bundle import Bundle
    man = Bundle.load(fp32).manifest
    dens = man.density or {}
    dshape = [man.model.map_height * man.model.map_width, int(dens["feature_dim"]), int(dens["bank_size"])] \
        if "feature_dim" in dens and "bank_size" in dens else None
    R["floor"] = run_worker({**common, "kind": "floor", "graphs": gr, "threads": 1, "gemm_s": 0.3 if args.quick else 1.0,
                             "density_shape": dshape})

    # 4. where the session's time goes (onnxruntime's node profile)
    R["nodes"] = {}
    for label, mj in models.items():
        if mj["model"] == "linewatch":
            say(f"{label}: onnxruntime node profile")
            R["nodes"][label] = run_worker({**common, "kind": "nodes", "bundle": mj["bundle"], "threads": 1,
                                            "n": 30 if args.quick else 300})

    # 5. fast-path profile (before / after, same process)
    if graphs is not None:
        say("fast-path profile (before / after)")
        R["profile"] = run_worker({**common, "kind": "profile", "bundle": str(fp32), "threads": 1,
                                   "graph_before": graphs["before"], "graph_after": graphs["after"],
                                   "profile": plan["profile"]})
    else:
        R["notes"].append("fast-path profile: needs the bundle's checkpoint to export the before/after graphs")
    R["machine"] = machine()
    shutil.rmtree(tmp, ignore_errors=True)
    return R


COLD_SCRIPT_ANOMALIB = """
import sys, numpy as np, cv2, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
name, size = s.get_inputs()[0].name, int(sys.argv[2])
for p in sys.argv[3:]:
    img = cv2.cvtColor(cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x = np.ascontiguousarray(np.transpose(img.astype(np.float32) / 255.0, (2, 0, 1))[None])
    r = dict(zip([o.name for o in s.get_outputs()], s.run(None, {name: x})))
    print(p, float(np.asarray(r["pred_score"]).reshape(-1)[0]) > 0.5, flush=True)
"""

COLD_SCRIPT_TORCH = """
import sys, torch
torch.set_num_threads(1)
from linewatch.runtime.preprocess import read_image, preprocess
from linewatch.training.checkpoint import load_checkpoint
det = load_checkpoint(sys.argv[1]).detector
for p in sys.argv[2:]:
    with torch.inference_mode():
        s = float(det.scorer(torch.from_numpy(preprocess(read_image(p), det.input_spec)[None]))[0][0])
    print(p, s > det.calibrator.threshold_, flush=True)
"""


def process_figures(models: dict, ckpt: Path | None, data: Path, pngs: list[Path], tmp: Path, n: int) -> dict:
    import numpy as np
    one = str(next((p for p in pngs if p.parent.name == "good"), pngs[0]))     # a good image: no heat map
    out = {}
    for label, mj in models.items():
        say(f"{label}: cold start x{n} and peak RSS")
        walls, rss = [], []
        for i in range(n):
            if mj["model"] == "linewatch":
                cmd = python_cmd(CLI_SCRIPT, "inspect", "--bundle", mj["bundle"], "--source", one, "--out",
                                 str(tmp / f"cold-{label}-{i}"), "--threads", "1")
            else:
                cmd = python_cmd(COLD_SCRIPT_ANOMALIB, mj["onnx"], str(mj["size"]), one)
            w, r, _ = timed_process(cmd)
            walls.append(w)
            rss.append(r)
        if mj["model"] == "linewatch":
            cmd = python_cmd(CLI_SCRIPT, "inspect", "--bundle", mj["bundle"], "--source", str(data / "test"), "--out",
                             str(tmp / f"all-{label}"), "--threads", "1")
        else:
            cmd = python_cmd(COLD_SCRIPT_ANOMALIB, mj["onnx"], str(mj["size"]), *map(str, pngs))
        _, rss_all, _ = timed_process(cmd)
        out[label] = {"cold_s": float(np.median(walls)), "cold_all": [round(w, 3) for w in walls],
                      "rss_one_mb": float(np.max(rss)), "rss_folder_mb": rss_all}
        if mj["model"] == "linewatch":
            out[label]["rss_by_batch_mb"] = rss_by_batch(mj["bundle"], data, tmp, label)
    if ckpt is not None:
        say("torch eager: cold start and peak RSS")
        walls, rss = [], []
        for _ in range(max(2, n // 2)):
            w, r, _ = timed_process(python_cmd(COLD_SCRIPT_TORCH, str(ckpt), one))
            walls.append(w)
            rss.append(r)
        _, rss_all, _ = timed_process(python_cmd(COLD_SCRIPT_TORCH, str(ckpt), *map(str, pngs)))
        out["torch eager (same graph)"] = {"cold_s": float(np.median(walls)), "cold_all": [round(w, 3) for w in walls],
                                           "rss_one_mb": float(np.max(rss)), "rss_folder_mb": rss_all}
    return out


def rss_by_batch(bundle: str, data: Path, tmp: Path, label: str) -> dict:
    """Peak RSS of `linewatch inspect --threads 1` over the test folder for --batch-size 1, 8 and 32."""
    out = {}
    for b in (1, 8, 32):
        _, r, _ = timed_process(python_cmd(CLI_SCRIPT, "inspect", "--bundle", bundle, "--source", str(data / "test"),
                                           "--out", str(tmp / f"rss-{label}-{b}"), "--threads", "1",
                                           "--batch-size", str(b)))
        out[str(b)] = r
    return out


def redo_process(R: dict) -> dict:
    """Cold start and peak RSS again, for the models and bundles of a previous run."""
    data = Path(R["images"]["data"])
    models = {"linewatch fp32": {"model": "linewatch", "bundle": R["bundles"]["fp32"]["path"]}}
    if R["bundles"]["int8"]["path"]:
        models["linewatch int8"] = {"model": "linewatch", "bundle": R["bundles"]["int8"]["path"]}
    for label, v in R["bundles"].get("variants", {}).items():
        models[label] = {"model": "linewatch", "bundle": v["path"]}
    for info in R["peers"]["models"].values():
        models[info["label"]] = {"model": "anomalib", "onnx": info["onnx"], "size": info["input_size"]}
    ck = Path(R["bundles"]["fp32"]["path"])
    ck = ck.with_name(ck.name + ".ckpt")
    tmp = Path(tempfile.mkdtemp(prefix="lw-latency-", dir=CACHE))
    R["process"] = process_figures(models, ck if ck.is_file() else None, data, _test_pngs(data), tmp,
                                   R["plan"]["cold"])
    shutil.rmtree(tmp, ignore_errors=True)
    R.setdefault("notes", []).append(f"cold start and peak RSS re-measured with `--redo process` at "
                                     f"{time.strftime('%H:%M UTC', time.gmtime())} (load average "
                                     f"{os.getloadavg()[0]:.2f}); every other figure is from the run above")
    return R


def machine() -> dict:
    import numpy as np
    import onnxruntime as ort
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
        isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "numpy": np.__version__, "load_before": os.getloadavg(),
            "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ==================================================================================================
# Report


def f1(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def write_report(R: dict, path: Path) -> None:
    L: list[str] = []
    lat, proc, fl = R["latency"], R["process"], R["floor"]
    models = [k.split("|")[0] for k in lat if k.endswith("|1")]
    b8 = R["bundles"]

    def get(label, t, kind, key="b1"):
        return lat.get(f"{label}|{t}", {}).get(kind, {}).get(key)

    def p(label, t, kind, q):
        v = get(label, t, kind)
        return None if v is None else v[q]

    def tp(label, t, kind, b, dp=False):
        v = get(label, t, kind, f"b{b}_dp_tp" if dp else f"b{b}_tp")
        return None if v is None else v["images_per_s"]

    m = R["machine"]
    L += ["# Latency, throughput, cold start and size (224 x 224)", "",
          f"Measured by `python bench/latency.py{' --quick' if R['quick'] else ''}` on {m['utc']}: "
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['isa'])}), Python {m['python']}, "
          f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}. Load average when the run started: "
          f"{', '.join(f'{x:.2f}' for x in m['load_before'])}.",
          "",
          f"Images: the {R['images']['n_test_pngs']} test PNGs (224 x 224 RGB, good and defective) of the demo brick "
          f"data (`DemoSpec({', '.join(f'{k}={v}' for k, v in R['images']['spec'].items())})`), the same images for "
          "every model. fp32 bundle: " + b8["fp32"]["how"] + ". int8 bundle: " + b8["int8"]["how"] + ".",
          "",
          "Every configuration runs in its own process; 1-thread runs are pinned to one CPU. Latencies are "
          f"p50 / p99 over {R['plan']['b1'][0]} iterations (anomalib and torch: {R['plan']['slow_b1'][0]}), "
          f"repeated {R['plan']['b1'][1]} times; the table gives the median of the repeats' p50 and p99.",
          ""]
    if R["quick"]:
        L += ["**QUICK RUN (`--quick`): few iterations; smoke test only, not figures to quote.**", ""]

    # targets
    lw32, lw8 = "linewatch fp32", "linewatch int8"

    def best(lab, kind):
        vals = [x for x in (tp(lab, 2, kind, 8), tp(lab, 2, kind, 32), tp(lab, 2, kind, 1, True),
                            tp(lab, 2, kind, 8, True)) if x is not None]
        return max(vals) if vals else None
    best_tp = lambda lab: best(lab, "session")      # noqa: E731
    best_tp_e2e = lambda lab: best(lab, "e2e")      # noqa: E731
    peers_labels = [k for k in models if not k.startswith(("linewatch", "torch"))]
    peer_e2e = [x for x in (p(k, 1, "e2e", "p50") for k in peers_labels) if x is not None]
    fastest_peer = min(peer_e2e) if peer_e2e else None
    size8 = b8["int8"]["bytes"] / 1e6 if b8["int8"]["bytes"] else None

    def row(what, value, target, unit, nd=2, at_most=True):
        wanted = f"{'≤' if at_most else '≥'} {target:g} {unit}"
        if value is None:
            return f"| {what} | {wanted} | not available | n/a |"
        met = value <= target if at_most else value >= target
        return f"| {what} | {wanted} | {value:.{nd}f} {unit} | **{'yes' if met else 'no'}** |"
    T = TARGETS
    rows = [
        row("end-to-end p50, 1 thread, fp32", p(lw32, 1, "e2e", "p50"), T["e2e_fp32_ms"], "ms"),
        row("end-to-end p50, 1 thread, int8", p(lw8, 1, "e2e", "p50"), T["e2e_int8_ms"], "ms"),
        row("throughput, 2 threads, fp32: session (best setting)", best_tp(lw32), T["throughput_2t"], "/s", 0, False),
        row("throughput, 2 threads, fp32: inspection pipeline (best setting)", best_tp_e2e(lw32), T["throughput_2t"],
            "/s", 0, False),
        row("throughput, 2 threads, int8: session (best setting)", best_tp(lw8), T["throughput_2t"], "/s", 0, False),
        row("throughput, 2 threads, int8: inspection pipeline (best setting)", best_tp_e2e(lw8), T["throughput_2t"],
            "/s", 0, False),
        row("cold start, fp32 (`linewatch inspect`, one image)", proc.get(lw32, {}).get("cold_s"), T["cold_s"], "s"),
        row("cold start, int8", proc.get(lw8, {}).get("cold_s"), T["cold_s"], "s"),
        row("runtime peak RSS, fp32 (whole test folder)", proc.get(lw32, {}).get("rss_folder_mb"), T["rss_mb"], "MB", 0),
        row("runtime peak RSS, int8 (whole test folder)", proc.get(lw8, {}).get("rss_folder_mb"), T["rss_mb"], "MB", 0),
        row("int8 bundle size", size8, T["int8_mb"], "MB"),
    ]
    e32 = p(lw32, 1, "e2e", "p50")
    if fastest_peer is None or e32 is None:
        rows.append("| faster than every anomalib model (e2e p50, 1 thread) | – | no anomalib rows | n/a |")
    else:
        rows.append(f"| faster than every anomalib model (e2e p50, 1 thread) | < {fastest_peer:.2f} ms (fastest peer) | "
                    f"{e32:.2f} ms (fp32) | **{'yes' if e32 < fastest_peer else 'no'}** |")
    L += ["## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"] + rows
    L += [""]

    # latency table
    L += ["## Batch-1 latency (ms), p50 / p99", "",
          "*Session*: `InferenceSession.run` on a preprocessed image (torch: the module's forward). *End to end*: "
          "from the PNG file to the verdict: read, decode, preprocess, run, p-value, JSON record written and "
          "flushed (`Inspector.inspect_paths`, batch 1, as `linewatch inspect` does for an image that is not "
          "flagged; a flagged image also gets its heat map, see the profile below). anomalib: decode, BGR -> RGB, "
          "[0, 1] float, run, its `pred_score` against 0.5, the same JSON record.", "",
          "| model | session 1 thread | session 2 threads | end to end 1 thread | end to end 2 threads |",
          "|---|---|---|---|---|"]
    for lab in models:
        cells = []
        for kind in ("session", "e2e"):
            for t in (1, 2):
                a, b = p(lab, t, kind, "p50"), p(lab, t, kind, "p99")
                cells.append("–" if a is None else f"{a:.2f} / {b:.2f}")
        L.append(f"| {lab} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    L += [""]

    # throughput
    L += ["## Throughput (images / s)", "",
          "*Session*: `run` calls on batches of preprocessed images; *intra-op*: one call at a time, its operators "
          "split over the threads; *2 x 1 thread*: two calls at once on a 1-thread session, one per Python thread "
          "(data parallel). *Pipeline*: `Inspector.inspect_paths` over the PNG files (read, decode, preprocess, "
          "run, verdict) with a JSON record written and flushed per image; intra-op: `batch_size=B` on a 2-thread "
          "session, decoding on the calling thread between batches; 2 workers: `inspect_paths(batch_size=B, "
          "workers=2)`, each worker reads, decodes and scores its own batch on the 1-thread session.", "",
          "| model | session b8, 1 thr | session b32, 1 thr | session b8, 2 thr intra-op | session b32, 2 thr intra-op "
          "| session b1, 2 x 1 thr | session b8, 2 x 1 thr | pipeline b8, 2 thr intra-op | pipeline b32, 2 thr intra-op "
          "| pipeline b1, 2 workers | pipeline b8, 2 workers |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lab in models:
        c = [tp(lab, 1, "session", 8), tp(lab, 1, "session", 32), tp(lab, 2, "session", 8), tp(lab, 2, "session", 32),
             tp(lab, 2, "session", 1, True), tp(lab, 2, "session", 8, True),
             tp(lab, 2, "e2e", 8), tp(lab, 2, "e2e", 32), tp(lab, 2, "e2e", 1, True), tp(lab, 2, "e2e", 8, True)]
        L.append(f"| {lab} | " + " | ".join(f1(x, 0) for x in c) + " |")
    L += [""]

    # process figures and size
    L += ["## Cold start, memory, size", "",
          "*Cold start*: wall time of a fresh process, from spawn until it exits after writing the first verdict "
          f"(`linewatch inspect --threads 1` on one good PNG; median of {R['plan']['cold']}). anomalib: a minimal "
          "`python -c` script (numpy, cv2, onnxruntime; session; one image); torch: a script that loads the training "
          "checkpoint and scores one image. *Peak RSS*: the VmHWM of that process (one image) and of one that "
          f"inspects all {R['images']['n_test_pngs']} test images (linewatch: with heat maps for flagged images).", "",
          "| model | cold start s | peak RSS, one image MB | peak RSS, test folder MB | model size MB |", "|---|---|---|---|---|"]
    for lab in models:
        pr = proc.get(lab, {})
        if lab == lw32:
            size = b8["fp32"]["bytes"] / 1e6
        elif lab == lw8:
            size = b8["int8"]["bytes"] / 1e6 if b8["int8"]["bytes"] else None
        elif lab in b8.get("variants", {}):
            size = b8["variants"][lab]["bytes"] / 1e6
        elif lab.startswith("torch"):
            size = (get(lab, 1, "session", "state_bytes") or 0) / 1e6 or None
        else:
            size = next((i["bytes"] / 1e6 for i in R["peers"]["models"].values() if i["label"] == lab), None)
        L.append(f"| {lab} | {f1(pr.get('cold_s'), 2)} | {f1(pr.get('rss_one_mb'), 0)} | {f1(pr.get('rss_folder_mb'), 0)} | "
                 f"{f1(size, 2) if size else '–'}{' (module state)' if size and lab.startswith('torch') else ''} |")
    L.append("")
    for lab in models:
        rb = proc.get(lab, {}).get("rss_by_batch_mb")
        if rb:
            L.append(f"- {lab}: peak RSS of `linewatch inspect --threads 1` over the test folder by `--batch-size`: "
                     + ", ".join(f"{b}: {v:.0f} MB" for b, v in rb.items()) + " (the onnxruntime arena holds a "
                     "batch's activations).")
    L += [""]

    # floor
    peak_ort = max(fl["ort_fp32_gflops"].values())
    peak_np = max(fl["numpy_fp32_gflops"].values())
    peak = max(peak_ort, peak_np)
    peak8 = max(fl["ort_int8_gops"].values())
    L += ["## The floor: multiply-adds / peak GEMM rate", "",
          f"Peak float32 GEMM, 1 thread (best of 3 windows; sizes {', '.join(fl['ort_fp32_gflops'])}): "
          f"onnxruntime MatMul **{peak_ort:.1f} GFLOP/s**, numpy matmul ({fl.get('numpy_blas', '?')}) **{peak_np:.1f} GFLOP/s**; "
          f"onnxruntime MatMulInteger (u8 x s8) {peak8:.1f} GOP/s. "
          + (f"The density's own GEMM shape ({' x '.join(map(str, fl.get('density_shape', [])))}) reaches "
             f"{fl['density_gemm_gflops']:.1f} GFLOP/s. " if fl.get("density_gemm_gflops") else "")
          + f"Floor = 2 x MACs / {peak:.1f} GFLOP/s (int8 graphs: their integer MACs at the MatMulInteger rate). "
          "Depthwise convolutions cannot reach GEMM rates (they are memory-bound), so the floor is a lower bound "
          "that no implementation reaches.", "",
          "| model | MACs (G) | of which int8 | floor ms | session p50, 1 thread, ms | session / floor |", "|---|---|---|---|---|---|"]
    for lab in models:
        g = fl["graphs"].get(lab)
        if not g:
            continue
        fp_macs = g["macs"] - g["int8_macs"]
        floor_ms = 1000 * (2 * fp_macs / (peak * 1e9) + 2 * g["int8_macs"] / (peak8 * 1e9))
        sp = p(lab, 1, "session", "p50")
        unk = f" ({len(g['unknown'])} of unknown shape not counted)" if g["unknown"] else ""
        L.append(f"| {lab} | {g['macs'] / 1e9:.3f}{unk} | {g['int8_macs'] / 1e9:.3f} | {floor_ms:.2f} | {f1(sp, 2)} | "
                 f"{(sp / floor_ms) if sp else 0:.1f}x |")
    L += [""]
    for lab, g in fl["graphs"].items():
        L.append(f"- {lab}: " + ", ".join(f"{op} {v / 1e9:.3f} G" for op, v in sorted(g["by_op"].items(), key=lambda kv: -kv[1])))
    L += [""]

    # profile
    if "profile" in R:
        pf = R["profile"]
        st = pf["steps"]
        L += ["## Fast path: profile, what changed, what it gained", "",
              "Each step of the per-image path, 1 thread, pinned, median ms; before and after measured in the same "
              f"process, interleaved over {R['plan']['profile'][1]} rounds (\"before\" = the code as it was before "
              "issue 5: its preprocessing and overlay functions are kept in this file, and the scoring graph is "
              "exported from the same checkpoint with the old density). Scores of the two graphs differ by at most "
              f"{pf['graph_score_diff']:.2g} nats (float32 rounding). The steps share the caches with each other "
              "(four graphs, images, heat maps), so the session figures here sit above the isolated ones in the "
              "latency table; compare before with after.", "",
              "| step | before | after | gain |", "|---|---|---|---|"]
        pairs = [("preprocess (resize if needed, normalise, HWC -> CHW)", "preprocess: before", "preprocess: after"),
                 ("session, batch 1 (density in one Gemm + 4 passes vs 9)", "session b1: density before", "session b1: density after"),
                 ("heat-map overlay (flagged images only)", "heat map overlay: before", "heat map overlay: after")]
        for name, a, b in pairs:
            L.append(f"| {name} | {st[a]:.3f} | {st[b]:.3f} | {st[a] - st[b]:.3f} ms ({100 * (1 - st[b] / st[a]):.0f} %) |")
        single = ["read file", "decode PNG (cv2.imdecode, IMREAD_UNCHANGED)", "p-value + verdict", "JSON record written + flushed",
                  "heat map PNG written (cv2.imwrite)"]
        for s in single:
            L.append(f"| {s} | {st[s]:.3f} | {st[s]:.3f} | unchanged |")
        good_b = sum(st[s] for s in ("read file", "decode PNG (cv2.imdecode, IMREAD_UNCHANGED)", "preprocess: before",
                                     "session b1: density before", "p-value + verdict", "JSON record written + flushed"))
        good_a = good_b - (st["preprocess: before"] - st["preprocess: after"]) - (st["session b1: density before"] - st["session b1: density after"])
        flag_b = good_b + st["heat map overlay: before"] + st["heat map PNG written (cv2.imwrite)"]
        flag_a = good_a + st["heat map overlay: after"] + st["heat map PNG written (cv2.imwrite)"]
        L.append(f"| **sum, good image** | **{good_b:.2f}** | **{good_a:.2f}** | **{good_b - good_a:.2f} ms ({100 * (1 - good_a / good_b):.0f} %)** |")
        L.append(f"| **sum, flagged image** | **{flag_b:.2f}** | **{flag_a:.2f}** | **{flag_b - flag_a:.2f} ms ({100 * (1 - flag_a / flag_b):.0f} %)** |")
        L += ["", "Session options (same graph, batch 1, 1 thread): "
              + ", ".join(f"{k.split(': ')[1]} {st[k]:.2f} ms" for k in ("session b1: ORT_ENABLE_BASIC", "session b1: ORT_ENABLE_EXTENDED"))
              + f", ORT_ENABLE_ALL {st['session b1: density after']:.2f} ms. "
              "Session time per image by batch size, 1 thread: "
              + ", ".join(f"b{b} {v:.2f} ms" for b, v in pf["per_image_ms_by_batch"].items()) + ".", ""]
    L += changes_section(R)
    L += misses_section(R, p, tp, best_tp, best_tp_e2e, fastest_peer, peak, peak8)
    notes = list(R["notes"])
    if R["peers"]["note"]:
        notes.append("anomalib: " + R["peers"]["note"])
    for m_, info in R["peers"]["models"].items():
        notes.append(f"{info['label']}: input {info['input_size']} x {info['input_size']} ({info['input']}); fitted on "
                     f"{info['n_train']} training images in {info['fit_seconds']} s, exported by {info['exporter']}; "
                     f"{info['note']}")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")


def changes_section(R: dict) -> list[str]:
    st = R.get("profile", {}).get("steps", {})
    g = lambda a, b: f" ({st[a]:.2f} -> {st[b]:.2f} ms)" if a in st and b in st else ""  # noqa: E731
    return [
        "### What was changed (issue 5, item 2)", "",
        "1. **Preprocessing** (`runtime/preprocess.py`): the normalisation `(x - mean) / std` was broadcast by numpy over "
        "an `(H, W, 3)` array, whose innermost loop is 3 elements long, and then transposed to CHW in a second copy. It "
        "now works one channel plane at a time, written straight into the `(C, H, W)` output (or a row of the caller's "
        "batch buffer): the same float32 operations in the same order, so the model input is bit-identical "
        "(`tests/test_preprocess.py` checks it against the formula)" + g("preprocess: before", "preprocess: after") + ".",
        "2. **Density in one Gemm** (`training/parzen.py`, the exported graph): `log w_i - c ||z - mu_i||^2` was computed "
        "as squared distances (MatMul, two adds, a clamp), then scaled and shifted: nine passes over the "
        "`196 x 2048` matrix. `c ||z||^2` is the same for every centre, so it now leaves the logsumexp, and the rest is "
        "`z . (2c mu_i) + (log w_i - c ||mu_i||^2)`: one MatMul whose constants fold into the initialisers and which "
        "onnxruntime fuses with the bias into one Gemm, then max, subtract-and-clamp, exp-and-sum: four passes. The "
        "scores are the same up to float32 rounding" + g("session b1: density before", "session b1: density after") + ".",
        "3. **Batch buffer** (`runtime/inspector.py`): `inspect_paths` preprocesses every image straight into one "
        "reused `(batch, C, H, W)` float32 buffer and runs the session on a view of it, instead of a new array per "
        "image and an `np.stack` copy per batch.",
        "4. **Session options, deliberately** (`runtime/inspector.py: session_options`, also used by this benchmark "
        "for the anomalib graphs): intra-op threads = `--threads`, one inter-op thread and sequential execution (the "
        "graph is a chain), `ORT_ENABLE_ALL` (the NCHWc layout and Conv+Clip fusion are what make the backbone fast; "
        "see the BASIC / EXTENDED figures above), CPU arena and memory patterns on (fixed input size).",
        "5. **Heat maps** (`runtime/heatmap.py`): still drawn only for flagged images; the blend is one "
        "`cv2.blendLinear` with per-pixel weights instead of float32 broadcasting over `(H, W, 3)` (pixels may differ "
        "by one grey level: rounding instead of truncation)" + g("heat map overlay: before", "heat map overlay: after") + ".",
        "6. **Data-parallel inspection** (`Inspector.inspect_paths(..., workers=N)`, `run_inspection(..., workers=N)`): "
        "with `workers > 1` each worker thread reads, decodes, preprocesses and scores its own batch on a 1-thread "
        "session (onnxruntime runs concurrent calls of one session in parallel), with bounded read-ahead and the "
        "verdicts still in input order. Splitting every operator over two intra-op threads leaves a core idle "
        "while the calling thread decodes, and small operators wait for their slowest thread; running whole "
        "images side by side does neither" + dp_gain(R) + ". The sequential path now also yields unreadable "
        "files in input order (they used to jump ahead of the images waiting in the batch).",
        "7. **Batching, measured**: at one thread a batch does not lower the per-image session cost, it raises it "
        + batch_text(R) + " (the early 112 x 112 activations of a batch no longer fit in cache), and the "
        "onnxruntime arena grows with the batch (" + rss_text(R) + "). So `linewatch inspect --batch-size auto` (the default) "
        "uses batch 1 at one thread and with `--workers`, and batch 8 only for intra-op threads.",
        "8. **Looked at and kept**: decoding is already one `cv2.imdecode(IMREAD_UNCHANGED)` on the file's bytes (PNG "
        "inflate is the cost; nothing is converted twice); the JSON record is flushed per record, as required, "
        "without fsync; p-values are one `searchsorted` per batch; the CPU arena stays on (off, a batch-1 run "
        "took about 40 % longer per image and peaked no lower, in a side measurement while profiling).", ""]


def dp_gain(R: dict) -> str:
    lat = R["latency"].get("linewatch fp32|2", {}).get("e2e", {})
    intra = [lat[k]["images_per_s"] for k in ("b8_tp", "b32_tp") if k in lat]
    dp = [lat[k]["images_per_s"] for k in ("b1_dp_tp", "b8_dp_tp") if k in lat]
    if not intra or not dp:
        return ""
    return (f": the fp32 pipeline at two threads goes from {max(intra):.0f} images/s (intra-op, best batch) to "
            f"{max(dp):.0f} images/s (2 workers), {100 * (max(dp) / max(intra) - 1):+.0f} %")


def rss_text(R: dict) -> str:
    rb = R.get("process", {}).get("linewatch fp32", {}).get("rss_by_batch_mb")
    if not rb:
        return "see the cold start table"
    return "peak RSS of the inspection process: " + ", ".join(f"{v:.0f} MB at batch {b}" for b, v in rb.items())


def batch_text(R: dict) -> str:
    b = R.get("profile", {}).get("per_image_ms_by_batch")
    if not b:
        return ""
    return "(" + ", ".join(f"batch {k}: {v:.2f} ms per image" for k, v in b.items()) + ", 1 thread)"


def misses_section(R, p, tp, best_tp, best_tp_e2e, fastest_peer, peak, peak8) -> list[str]:
    lw32, lw8 = "linewatch fp32", "linewatch int8"
    st = R.get("profile", {}).get("steps", {})
    nodes = R.get("nodes", {})
    fl = R["floor"]["graphs"]
    out = ["## Where a target is missed, and what would close it", ""]
    missed = False

    def floor_of(label):
        g = fl.get(label, {})
        return 1000 * (2 * (g.get("macs", 0) - g.get("int8_macs", 0)) / (peak * 1e9)
                       + 2 * g.get("int8_macs", 0) / (peak8 * 1e9))

    def parts(label):
        n = nodes.get(label)
        if not n:
            return ""
        bp = n["by_part_ms"]
        return (f"onnxruntime's node profile puts {bp.get('backbone', 0):.2f} ms in the backbone, "
                f"{bp.get('density', 0):.2f} ms in the density and {bp.get('other', 0):.2f} ms elsewhere")

    host = None
    if st:
        host = st["read file"] + st["decode PNG (cv2.imdecode, IMREAD_UNCHANGED)"] + st["preprocess: after"] + \
            st["p-value + verdict"] + st["JSON record written + flushed"]
    for label, target in ((lw32, TARGETS["e2e_fp32_ms"]), (lw8, TARGETS["e2e_int8_ms"])):
        e = p(label, 1, "e2e", "p50")
        if e is None or e <= target:
            continue
        missed = True
        s1 = p(label, 1, "session", "p50")
        floor_ms = floor_of(label)
        n = nodes.get(label, {}).get("by_part_ms", {})
        conv_floor = 1000 * 2 * fl.get(label, {}).get("by_op", {}).get("Conv", 0) / (peak * 1e9)
        share = n.get("density", 0) / max(sum(n.values()), 1e-9)
        gap = e - s1 - (host or 0.0)
        out.append(
            f"- **{label}, end-to-end p50 {e:.2f} ms > {target:g} ms.** The session alone takes {s1:.2f} ms"
            + (f"; the host steps (read, decode, preprocess, verdict, record) about {host:.2f} ms, nearly all of it "
               "the PNG decode" if host else "")
            + (f"; the remaining {gap:.1f} ms is the session running slower between decodes than back to back "
               "(decoding evicts the graph's weights and activations from the 1 MB L2 cache)" if host and gap > 0.3 else "")
            + ". " + (parts(label) + ". " if parts(label) else "")
            + f"The multiply-add floor of the whole graph is {floor_ms:.2f} ms"
            + (f", and the backbone runs at {n['backbone'] / conv_floor:.1f}x its own floor ({conv_floor:.2f} ms): "
               "its depthwise convolutions and the 112 x 112 expanded layers of Lite0's first blocks are "
               "memory-bound" if n.get("backbone") and conv_floor else "")
            + (f"; even at the floor, session plus host steps would take {floor_ms + host:.1f} ms" if host else "")
            + ". What would close it: fewer multiply-adds per image. " + (
                "Quantise the early blocks too (the int8 export keeps the stem and blocks 0-6 in fp32 because int8 "
                "there breaks the accuracy gate on gravel and grass; see `export/quantize.py`: here only "
                f"{fl.get(label, {}).get('int8_macs', 0) / max(fl.get(label, {}).get('macs', 1), 1):.0%} of the "
                "multiply-adds run in int8), use a smaller bank (`density.bank_size`, 1024 by default since "
                "bench/results/accuracy.md; 512 would halve the density's Gemm again) or a smaller input. This CPU has no VNNI, so int8 convolutions gain little over "
                "fp32 here; ARM dot-product or VNNI CPUs gain more."
                if label == lw8 else
                f"int8 in the backbone (as far as the accuracy gate allows), a smaller density bank "
                f"(`density.bank_size`; the density is {share:.0%} of the session's kernel time), or a smaller "
                "input (the backbone's cost scales with pixels: 192 px would save about a quarter); and, when "
                "images arrive faster than one at a time, decoding on another thread (`workers`)."))
    for label in (lw32, lw8):
        if p(label, 1, "e2e", "p50") is None:
            continue
        b = best_tp(label)
        if b is not None and b < TARGETS["throughput_2t"]:
            missed = True
            bp = best_tp_e2e(label)
            one = best_tp_one(R, label, tp)
            s1 = p(label, 1, "session", "p50")
            out.append(
                f"- **{label}, throughput with 2 threads {b:.0f} images/s (session, best setting; inspection pipeline "
                f"{bp:.0f}) < {TARGETS['throughput_2t']:g}.** 250 images/s on two cores leaves 8 ms of CPU per image, "
                f"decoding included; one image's session alone takes {s1:.2f} ms at one thread (best 1-thread "
                f"rate {one:.0f} images/s), and the multiply-add floor is {floor_of(label):.2f} ms. Two cores "
                f"give {b / max(one, 1e-9):.2f}x the 1-thread rate (they share the L3 cache and memory bandwidth). "
                "What would close it is the same as for the latency: fewer multiply-adds per image (int8 in more of "
                "the backbone, a smaller bank, a smaller input), since the session is already within "
                f"{s1 / floor_of(label):.1f}x of the floor.")
    pr = R["process"]
    for label in (lw32, lw8):
        c = pr.get(label, {}).get("cold_s")
        if c is not None and c > TARGETS["cold_s"]:
            missed = True
            out.append(f"- **{label}, cold start {c:.2f} s > {TARGETS['cold_s']:g} s.** Most of it is importing numpy, "
                       "OpenCV and onnxruntime and building the session (graph optimisation); an optimised model "
                       "saved at export time would skip the latter.")
        r = pr.get(label, {}).get("rss_folder_mb")
        if r is not None and r > TARGETS["rss_mb"]:
            missed = True
            rb = pr.get(label, {}).get("rss_by_batch_mb", {})
            out.append(f"- **{label}, peak RSS {r:.0f} MB > {TARGETS['rss_mb']:g} MB** (`linewatch inspect`, default "
                       "`--batch-size auto`). The onnxruntime arena keeps a batch's activations"
                       + (f"; at `--batch-size 1` the same run peaks at {rb['1']:.0f} MB" if "1" in rb else "") + ".")
    b8 = R["bundles"]["int8"]["bytes"]
    if b8 and b8 / 1e6 > TARGETS["int8_mb"]:
        missed = True
        out.append(f"- **int8 bundle {b8 / 1e6:.2f} MB > {TARGETS['int8_mb']:g} MB.**")
    if not b8:
        missed = True
        out.append("- **int8: not measured.** " + R["bundles"]["int8"]["how"])
    e = p(lw32, 1, "e2e", "p50")
    if fastest_peer and e is not None and e >= fastest_peer:
        missed = True
        out.append(f"- **Not faster than every anomalib model**: fastest peer {fastest_peer:.2f} ms vs {e:.2f} ms.")
    for label, v in R["bundles"].get("variants", {}).items():
        e, s1 = p(label, 1, "e2e", "p50"), p(label, 1, "session", "p50")
        if e is None:
            continue
        b, bp = best_tp(label), best_tp_e2e(label)
        out.append(
            f"- **Measured beside the default: {label}** (`{json.dumps(v['overrides'])}`): end-to-end p50 {e:.2f} ms "
            f"at 1 thread ({'meets' if e <= TARGETS['e2e_fp32_ms'] else 'misses'} the fp32 target of "
            f"{TARGETS['e2e_fp32_ms']:g} ms), session {s1:.2f} ms, multiply-add floor {floor_of(label):.2f} ms"
            + (f", best 2-thread throughput {b:.0f} images/s (session; pipeline {bp:.0f})" if b and bp else "")
            + ". What it costs in accuracy is in bench/results/accuracy.md (the row with the same change); the "
            "default follows that table.")
    if not missed:
        out.append("- None: every target is met in this run.")
    return out + [""]


def best_tp_one(R, label, tp) -> float:
    """Best 1-thread session rate: batch 1 (from its p50), 8 or 32."""
    b1 = R["latency"].get(f"{label}|1", {}).get("session", {}).get("b1")
    rates = [x for x in (tp(label, 1, "session", 8), tp(label, 1, "session", 32)) if x is not None]
    return max(rates + ([1000.0 / b1["p50"]] if b1 else []) or [0.0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"few iterations, for a smoke test; the report goes to {CACHE}/latency-quick.md, not bench/results")
    ap.add_argument("--bundle", help="fp32 bundle (default: train the default configuration on the demo brick data)")
    ap.add_argument("--int8-bundle", help="int8 bundle (default: export one from the fp32 bundle's checkpoint)")
    ap.add_argument("--no-peers", action="store_true", help="leave anomalib out")
    ap.add_argument("--no-variants", action="store_true", help="leave out the smaller linewatch graphs (VARIANTS)")
    ap.add_argument("--out", type=Path, help="report path (default bench/results/latency.md, or latency-quick.md)")
    ap.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    ap.add_argument("--redo", choices=["process", "report"],
                    help="process: re-measure cold start and peak RSS of the last run (cache last.json) and rewrite "
                         "the report; report: only rewrite it from last.json (e.g. with another --note)")
    ap.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    t0 = time.perf_counter()
    if args.redo:
        R = json.loads((CACHE / ("last-quick.json" if args.quick else "last.json")).read_text())
        if args.redo == "process":
            R = redo_process(R)
    else:
        R = measure(args)
        R["seconds"] = time.perf_counter() - t0
    R["notes"] = list(R.get("notes", [])) + args.note
    out = args.out or (CACHE / "latency-quick.md" if args.quick else RESULTS / "latency.md")
    if args.json:
        args.json.write_text(json.dumps(R, indent=1))
    (CACHE / ("last-quick.json" if args.quick else "last.json")).write_text(json.dumps(R, indent=1))
    write_report(R, out)
    say(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
