"""The ``linewatch`` command. Subcommands import what they need, so ``inspect`` never loads torch."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
exit codes: 0 success, 1 the job failed (message on stderr), 2 bad command line.
docs: README.md (bundle format, layout, configuration)."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("linewatch")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from linewatch.jobs.train import run_train

    checkpoint = False if args.no_checkpoint else (args.checkpoint or True)
    _, summary = run_train(args.data, args.out, args.config, _say, overwrite=args.overwrite, checkpoint=checkpoint)
    print(json.dumps(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from linewatch.jobs.export import run_export

    _, summary = run_export(args.checkpoint, args.out, int8=args.int8, overwrite=args.overwrite, progress=_say)
    print(json.dumps(summary))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from linewatch.runtime.inspect_run import run_inspection
    from linewatch.runtime.inspector import Inspector
    from linewatch.runtime.preprocess import DEFAULT_MAX_PIXELS

    inspector = Inspector(args.bundle, threads=args.threads, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    summary = run_inspection(inspector, args.source, args.out, batch_size=args.batch_size,
                             heatmaps=not args.no_heatmaps, progress=_say)
    print(json.dumps(summary.to_dict()))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from linewatch.runtime.bundle import Bundle
    from linewatch.runtime.signing import KEY_ENV, VERIFIED, sign_bundle

    if args.check:
        bundle = Bundle.load(args.bundle)
        if bundle.signature != VERIFIED:
            raise RuntimeError(f"{args.bundle}: {KEY_ENV} is not set, so the signature cannot be checked; set it to "
                               "the signing key and run again")
        print(json.dumps({"bundle": str(bundle.path), "id": bundle.id, "signature": bundle.signature}))
        return 0
    sig = sign_bundle(args.bundle)
    _say(f"signed {args.bundle}: {sig}")
    print(json.dumps({"bundle": str(args.bundle), "signature_file": str(sig), "signature": "written"}))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from linewatch.runtime.audit import write_report

    summary = write_report(args.results, args.bundle, args.out, limit=args.limit or None, recent=args.recent,
                           threads=args.threads, progress=_say)
    _say(f"report written: {summary['out']} ({summary['bytes'] / 1e6:.2f} MB, {summary['shown']} flagged images)")
    print(json.dumps(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from linewatch.jobs.demo import format_reports, run_demo
    from linewatch.training.demo_data import DemoSpec

    spec = DemoSpec(n_train=args.n_train)
    reports = run_demo(args.out, tuple(args.textures), spec, args.config, _say)
    print(format_reports(reports))
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from linewatch.runtime.augment import run_augment

    summary = run_augment(args.bundle, args.count, args.out, steps=args.steps, seed=args.seed, threads=args.threads,
                          progress=_say)
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="linewatch", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Visual anomaly detection for factory lines: train on good images, inspect on the edge.")
    p.add_argument("--version", action="version", version=f"linewatch {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train on good images and write a bundle",
                       description="Fit a detector on good images only and write a verified bundle "
                                   "(model.onnx + manifest.json). Progress goes to stderr; a JSON summary to stdout.")
    t.add_argument("--data", required=True, metavar="DIR",
                   help="a folder of good images (recursive), or an MVTec-style category folder (train/good, test/...)")
    t.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (must not exist)")
    t.add_argument("--config", metavar="FILE", help="YAML configuration (see configs/default.yaml); defaults if omitted")
    t.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder (and checkpoint)")
    ck = t.add_mutually_exclusive_group()
    ck.add_argument("--checkpoint", metavar="CKPT",
                    help="where to write the training checkpoint that `linewatch export` reads (default: BUNDLE.ckpt "
                         "next to the bundle folder)")
    ck.add_argument("--no-checkpoint", action="store_true", help="do not write a checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="write a bundle (fp32 or int8) from a training checkpoint, without refitting",
                       description="Write a verified bundle from the checkpoint `linewatch train` wrote (BUNDLE.ckpt). "
                                   "With --int8 the late backbone layers are quantised (onnxruntime static QDQ, "
                                   "per-channel weights, calibrated on training images; the density stays fp32) and the bundle is written only if, on "
                                   "held-out images, image AUROC drops by at most 0.005 and the Spearman correlation "
                                   "of int8 and fp32 scores is at least 0.99; otherwise the export stops and says both "
                                   "figures. Progress goes to stderr; a JSON summary to stdout.")
    e.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file written by `linewatch train`")
    e.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (must not exist)")
    e.add_argument("--int8", action="store_true", help="quantise to int8 behind the accuracy gate (default fp32)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("inspect", help="score images with a bundle (edge runtime, no torch)",
                       description="Score an image, a folder (recursive) or a glob. Writes OUT/results.jsonl (one JSON "
                                   "object per image: source, score, threshold, anomalous, p_value, error, latency_ms, "
                                   "bundle, heatmap) and OUT/heatmaps/*.png for flagged images. Re-running into the same "
                                   "OUT resumes where it stopped.")
    i.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder written by `linewatch train`")
    i.add_argument("--source", required=True, metavar="SRC", help="an image file, a folder, or a glob such as 'cam1/*.png'")
    i.add_argument("--out", required=True, metavar="DIR", help="output folder for results.jsonl and heat maps")
    i.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default 8)")
    i.add_argument("--threads", type=int, default=0, metavar="N", help="onnxruntime threads (default 0 = all cores)")
    i.add_argument("--no-heatmaps", action="store_true", help="do not write heat-map overlays")
    i.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                   help="refuse images whose header declares more than N pixels (width x height) before decoding "
                        "them; the record gets an error and the run goes on (default 268435456 = 16384 x 16384)")
    i.set_defaults(func=cmd_inspect)

    s = sub.add_parser("sign", help="sign a bundle with the key in LINEWATCH_BUNDLE_KEY (HMAC-SHA256), or check it",
                       description="Check a bundle's files against its manifest, then write BUNDLE/manifest.sig: the "
                                   "HMAC-SHA256 of manifest.json (which lists every file's sha256) under the key in "
                                   "LINEWATCH_BUNDLE_KEY ('hex:' followed by hex digits, or any other text used as its "
                                   "UTF-8 bytes; at least 16 bytes). Where the key is set, loading a bundle that is "
                                   "unsigned or whose signature does not match is refused; `train` and `export` sign "
                                   "the bundles they write. Without the key set, signatures are not checked.")
    s.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder to sign")
    s.add_argument("--check", action="store_true", help="verify the bundle and its signature instead of signing")
    s.set_defaults(func=cmd_sign)

    a = sub.add_parser("audit", help="one self-contained HTML report to review flagged images (edge runtime, no torch)",
                       description="Write one HTML file (images inline, no network: it opens from a USB stick) for the "
                                   "results of `linewatch inspect`: counts, a score histogram, score drift against the "
                                   "bundle's calibration (PSI, KS), and per flagged image (highest score first) the heat "
                                   "map, score, threshold, p-value and the nearest good training images. Review in the "
                                   "browser with the keyboard (j/k move, d defect, g good = false alarm, u undo, e "
                                   "export) and export verdicts.jsonl for `linewatch retrain`. A JSON summary goes to "
                                   "stdout.")
    a.add_argument("--results", required=True, metavar="DIR", help="the --out folder of `linewatch inspect` (results.jsonl)")
    a.add_argument("--bundle", required=True, metavar="BUNDLE",
                   help="the bundle folder that inspected them (its id must match the results' bundle field)")
    a.add_argument("--out", required=True, metavar="HTML", help="report file to write, e.g. report.html")
    a.add_argument("--limit", type=int, default=200, metavar="N",
                   help="at most N flagged images in the report, highest scores first (default 200; 0 = all)")
    a.add_argument("--recent", type=int, default=200, metavar="N",
                   help="drift compares the N most recent scores with the calibration scores (default 200)")
    a.add_argument("--threads", type=int, default=1, metavar="N", help="onnxruntime threads (default 1)")
    a.set_defaults(func=cmd_audit)

    d = sub.add_parser("demo", help="build the demo textures, train, inspect and report accuracy",
                       description="Builds the built-in demo data (scikit-image textures with defect-synthesis "
                                   "defects), trains a bundle per texture, inspects each test split and prints image "
                                   "AUROC and the false-alarm rate on good test images against the target.")
    d.add_argument("--out", default="demo-output", metavar="DIR", help="working folder (default ./demo-output)")
    d.add_argument("--textures", nargs="+", default=["brick", "gravel", "grass"], choices=["brick", "gravel", "grass"])
    d.add_argument("--n-train", type=int, default=200, metavar="N", help="good training crops per texture (default 200)")
    d.add_argument("--config", metavar="FILE", help="YAML configuration for training")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("augment", help="new good images from top-layer chain samples, decoded to pixels (no torch)",
                       description="Start from training images' patch-state maps shipped in the bundle, run the top-layer "
                                   "CAE chain on every patch for --steps steps, and decode each map to pixels with the "
                                   "bundle's decoder.onnx. Writes OUT/augment_NNNN.png and OUT/contact_sheet.png; the JSON "
                                   "summary gives, per sample, its nearest training image (level-1 feature space) and "
                                   "distinct_nearest_training_images, a measure of diversity. Needs a bundle trained "
                                   "with configs/augment.yaml (stack, chain and pixel decoder).")
    a.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder trained with configs/augment.yaml")
    a.add_argument("--count", required=True, type=int, metavar="N", help="number of images to write")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing; files are replaced)")
    a.add_argument("--steps", type=int, default=20, metavar="K",
                   help="chain steps per sample (default 20; bench/results/augment.md: fewer leave each sample near its start)")
    a.add_argument("--seed", type=int, default=0, metavar="S", help="random seed for starts and noise (default 0)")
    a.add_argument("--threads", type=int, default=0, metavar="N", help="onnxruntime threads (default 0 = all cores)")
    a.set_defaults(func=cmd_augment)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except ImportError as exc:   # the edge install (Dockerfile.edge) has only the runtime: `inspect`
        _say(f"linewatch {args.command}: error: {exc}. This installation lacks what `{args.command}` needs (the "
             "edge runtime has only `inspect`); run it where linewatch is installed with its training extras: "
             "pip install 'linewatch[train]'")
        return 1
    except (OSError, ValueError, RuntimeError) as exc:
        _say(f"linewatch {args.command}: error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
