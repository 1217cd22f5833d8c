"""Fit anomalib's PaDiM and PatchCore (Lite0, the accuracy benchmark's settings) and export them to ONNX.

Runs in the peer env (``bench/peers/.venv``), never in linewatch's; ``bench/latency.py`` calls it
through a subprocess and then times the exported graphs with onnxruntime in linewatch's env, on the
same images as linewatch's bundles.

    export_onnx.py --data FOLDER --out DIR [--image-size 224] [--threads 1] [--models padim patchcore]

The models are built exactly as ``run_anomalib.py`` builds them (its ``build``: Lite0 with the
offline ImageNet weights, BatchNorm eps 1e-3, ``Resize + Normalize(0.5, 0.5)`` pre-processor, PaDiM
layers ``blocks.1+2+4`` with 100 features, PatchCore layers ``blocks.2+4`` with coreset ratio 0.01),
fitted with ``Engine.fit`` on FOLDER (MVTec-style), then written with
``Engine.export(model=..., export_type="onnx", export_root=DIR/<model>)``:
``DIR/<model>/weights/onnx/model.onnx`` (+ ``model.onnx.data``). The graph takes float32 RGB in
``[0, 1]``, ``[N, 3, H, W]``, resizes and normalises inside, and returns anomalib's normalised
``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``. ``DIR/<model>/export.json``
records the input size, the fit and export times and a note. An existing export is reused unless
``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="MVTec-style category folder")
    ap.add_argument("--out", required=True, type=Path, help="export root; one subfolder per model")
    ap.add_argument("--image-size", type=int, default=224, help="model input side (px)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (pinned)")
    ap.add_argument("--models", nargs="+", default=["padim", "patchcore"], choices=["padim", "patchcore"])
    ap.add_argument("--force", action="store_true", help="refit and re-export even if an export exists")
    return ap.parse_args(argv)


def export(engine, model, dest: Path, size: int) -> tuple[Path, str]:
    """``Engine.export(export_type="onnx")``; -> (onnx path, which exporter).

    anomalib 2.7's ONNX export uses torch's dynamo exporter, which needs ``onnxscript``. Without it,
    or when the graph it writes has a fixed batch size (its PatchCore export fixes the batch at the
    example's 2, which batch-1 inspection cannot feed), the same module (pre-processing, model and
    post-processing, as ``to_onnx`` traces it) is exported with torch's TorchScript exporter instead,
    to the same path, with the same input and output names and a dynamic batch axis.
    """
    why = "onnxscript, needed by Engine.export's dynamo exporter, is not in the peer env"
    try:
        import onnxscript  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        path = Path(engine.export(model=model, export_type="onnx", export_root=dest, input_size=(size, size)))
        import onnx
        dim0 = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
        if not dim0.HasField("dim_value"):
            return path, "anomalib Engine.export (torch dynamo exporter)"
        why = f"anomalib's Engine.export (dynamo) wrote a graph with its batch fixed at {dim0.dim_value}"
        for f in path.parent.glob(path.name + "*"):
            f.unlink()
    import warnings

    import torch
    model = model.eval()
    probe = torch.rand(1, 3, size, size)
    with torch.no_grad():
        names = [k for k, v in model(probe)._asdict().items() if v is not None]
    path = dest / "weights" / "onnx" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (probe,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=names, dynamic_axes=axes)
    return path, f"torch.onnx.export(dynamo=False) of the module anomalib's to_onnx exports ({why})"


def main() -> int:
    args = parse_args()
    todo = [m for m in args.models if args.force or not (args.out / m / "export.json").is_file()]
    if not todo:
        print(f"anomalib exports: all present under {args.out}", flush=True)
        return 0
    # run_anomalib parses sys.argv when imported (its thread pinning and offline settings must happen
    # before torch / timm load), so hand it an argv it accepts; then reuse its builders and hacks.
    sys.argv = [str(HERE / "run_anomalib.py"), "--data", str(args.data), "--out", str(args.out),
                "--image-size", str(args.image_size), "--threads", str(args.threads), "--models", *todo]
    sys.path.insert(0, str(HERE))
    import run_anomalib as ra  # noqa: E402  (pins threads, stubs torchvision ops, imports anomalib)
    from anomalib.engine import Engine

    root = args.data.resolve()
    args.out = args.out.resolve()
    desc = ra.describe_folder(root)
    work = Path(tempfile.mkdtemp(prefix="anomalib-export-"))
    failed = []
    cwd = os.getcwd()
    os.chdir(work)                  # anything written to a relative path lands in the temp dir
    try:
        for name in todo:
            try:
                ra.seed_everything(0, workers=False, verbose=False)
                model, trainer_kw, label, note = ra.build(name, args.image_size, quick=False)
                dm = ra.make_datamodule(root, desc, ra.BATCH)
                engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=work / name,
                                callbacks=[ra.NoCheckpoint(dirpath=work / name / "ckpt")],
                                enable_progress_bar=False, enable_model_summary=False, **trainer_kw)
                t0 = time.perf_counter()
                engine.fit(model=model, datamodule=dm)
                fit_s = time.perf_counter() - t0
                dest = (args.out / name).resolve()
                dest.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                path, exporter = export(engine, model, dest, args.image_size)
                export_s = time.perf_counter() - t0
                files = sorted(p for p in Path(path).parent.iterdir() if p.is_file())
                info = {"model": name, "label": label, "onnx": str(path), "input_size": args.image_size,
                        "input": "float32 RGB in [0, 1], [N, 3, H, W]; resize + normalisation inside the graph",
                        "fit_seconds": round(fit_s, 1), "export_seconds": round(export_s, 1),
                        "exporter": exporter, "n_train": desc["n_train"], "threads": args.threads,
                        "bytes": sum(p.stat().st_size for p in files), "files": [p.name for p in files],
                        "note": note}
                (dest / "export.json").write_text(json.dumps(info, indent=1))
                print(f"{name}: fit {fit_s:.1f} s, export {export_s:.1f} s -> {path} "
                      f"({info['bytes'] / 1e6:.1f} MB)", flush=True)
            except Exception:  # noqa: BLE001
                failed.append(name)
                print(f"{name}: FAILED (traceback on stderr)", flush=True)
                traceback.print_exc(file=sys.stderr)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
