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

    inspector = Inspector(args.bundle, threads=args.threads)
    summary = run_inspection(inspector, args.source, args.out, batch_size=args.batch_size,
                             heatmaps=not args.no_heatmaps, progress=_say)
    print(json.dumps(summary.to_dict()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from linewatch.jobs.demo import format_reports, run_demo
    from linewatch.training.demo_data import DemoSpec

    spec = DemoSpec(n_train=args.n_train)
    reports = run_demo(args.out, tuple(args.textures), spec, args.config, _say)
    print(format_reports(reports))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from linewatch.jobs.retrain import GateRefused, run_retrain

    try:
        summary = run_retrain(args.bundle, args.data, args.verdicts, args.out, force=args.force,
                              any_bundle=args.any_bundle, augment=args.augment, overwrite=args.overwrite,
                              checkpoint=not args.no_checkpoint, engine=args.engine, workers=args.workers,
                              auroc_tolerance=args.auroc_tolerance, holdout_reviewed=args.holdout_reviewed,
                              progress=_say)
    except GateRefused as exc:
        print(json.dumps(exc.comparison))
        _say(f"linewatch retrain: refused: {exc}")
        return 3
    print(json.dumps(summary))
    return 0


def cmd_score_archive(args: argparse.Namespace) -> int:
    from linewatch.jobs.score_archive import run_score_archive

    summary = run_score_archive(args.bundle, args.source, args.out, engine=args.engine, workers=args.workers,
                                batch_size=args.batch_size, threads=args.threads, progress=_say)
    print(json.dumps(summary))
    return 0


RETRAIN_HELP = """\
Retrain a bundle with the images reviewers judged, and write the new bundle (the challenger) only if it
is not worse than the current one (the champion).

training set: the original good images (--data, the folder the champion was trained on) + the images
  the verdict file marks "good" (false alarms; read in place, never copied into --data), less a held-out
  share (--holdout-reviewed) + optional augmented samples (--augment N, bundles with a pixel decoder).
  The champion's training configuration (manifest lineage.config) is reused.
evaluation set, the same for both bundles and trained on by neither: --data's test/good images (else
  validation/good) + confirmed defects (--data's test/<type> and the verdicts marked "defect").
gate: the challenger is written only if
  image AUROC(challenger) >= AUROC(champion) - tolerance (default 0.005) and
  false-alarm rate(challenger, own threshold) <= false-alarm rate(champion, own threshold);
  otherwise nothing is written and the command exits 3, naming both figures; --force writes it anyway
  and the manifest records that the gate was forced. Also reported: each bundle's false-alarm rate on
  the reviewed false alarms (all, and the held-out share).
lineage: the new manifest records the parent, fingerprints of the original and reviewed images, the
  verdict file's sha256, the comparison's figures and the decision.
verdict file: JSON lines {"source", "label": "defect"|"good", "score", "bundle", "reviewed_utc"}, as
  exported by `linewatch audit`. Invalid lines stop the job (line number and reason); images that no
  longer exist are reported and skipped; verdicts made on another bundle are refused unless --any-bundle.
crash safety: the bundle is staged in a hidden sibling folder and renamed into place; a killed run
  leaves no partial bundle at OUT and the next run cleans up after it.
The comparison is printed as JSON on stdout (also when refused); progress goes to stderr.
exit codes: 0 written, 1 error, 2 bad command line, 3 refused by the gate."""


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
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("retrain", help="retrain with reviewed images; write the new bundle only if it is not worse",
                       description=RETRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--bundle", required=True, metavar="B", help="the current bundle (champion)")
    r.add_argument("--data", required=True, metavar="DIR", help="the data folder the champion was trained on")
    r.add_argument("--verdicts", required=True, metavar="V.jsonl", help="verdict file from `linewatch audit`")
    r.add_argument("--out", required=True, metavar="B2", help="bundle folder to write if the gate passes")
    r.add_argument("--force", action="store_true", help="write the challenger even if the gate fails (recorded)")
    r.add_argument("--any-bundle", action="store_true", help="accept verdicts made on other bundles than --bundle")
    r.add_argument("--augment", type=int, default=0, metavar="N",
                   help="add N augmented good samples from the champion's chain (skipped with a note if it has none)")
    r.add_argument("--auroc-tolerance", type=float, default=0.005, metavar="T",
                   help="allowed AUROC drop of the challenger (default 0.005)")
    r.add_argument("--holdout-reviewed", type=float, default=0.2, metavar="F",
                   help="share of the reviewed good images kept out of training to measure the challenger on "
                        "false alarms it has not seen (default 0.2; 0 = train on all)")
    r.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="where feature extraction runs: this process, or Ray actors (needs linewatch[scale])")
    r.add_argument("--workers", type=int, default=2, metavar="N", help="Ray actors, one CPU each (default 2)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing B2 (and its checkpoint)")
    r.add_argument("--no-checkpoint", action="store_true", help="do not write B2.ckpt")
    r.set_defaults(func=cmd_retrain)

    a = sub.add_parser("score-archive", help="score a large archive of images, in this process or on Ray workers",
                       description="Score every image of SRC (offline audit, e.g. a month of production) into "
                                   "OUT/results.jsonl: the records of `inspect --no-heatmaps`, resumable the same way. "
                                   "--engine ray spreads chunks of --batch-size paths over --workers Ray actors (one "
                                   "CPU and one onnxruntime thread each; a local Ray instance unless RAY_ADDRESS names a "
                                   "cluster, whose nodes must see the bundle and images at the same paths). Scores are "
                                   "the same whichever engine runs. Needs linewatch[scale] for --engine ray.")
    a.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder")
    a.add_argument("--source", required=True, metavar="SRC", help="an image file, a folder (recursive) or a glob")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder for results.jsonl")
    a.add_argument("--engine", choices=["local", "ray"], default="local", help="where to score (default local)")
    a.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local: one-thread batch pipelines (1 = one pipeline using --threads); ray: actors (default 1)")
    a.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call and per Ray task")
    a.add_argument("--threads", type=int, default=0, metavar="N",
                   help="onnxruntime threads with --engine local --workers 1 (default 0 = all cores)")
    a.set_defaults(func=cmd_score_archive)

    d = sub.add_parser("demo", help="build the demo textures, train, inspect and report accuracy",
                       description="Builds the built-in demo data (scikit-image textures with defect-synthesis "
                                   "defects), trains a bundle per texture, inspects each test split and prints image "
                                   "AUROC and the false-alarm rate on good test images against the target.")
    d.add_argument("--out", default="demo-output", metavar="DIR", help="working folder (default ./demo-output)")
    d.add_argument("--textures", nargs="+", default=["brick", "gravel", "grass"], choices=["brick", "gravel", "grass"])
    d.add_argument("--n-train", type=int, default=200, metavar="N", help="good training crops per texture (default 200)")
    d.add_argument("--config", metavar="FILE", help="YAML configuration for training")
    d.set_defaults(func=cmd_demo)
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
