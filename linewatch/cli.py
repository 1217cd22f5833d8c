"""The ``linewatch`` command. Subcommands import what they need, so ``inspect`` never loads torch."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap

EPILOG = """\
exit codes: 0 success, 1 the job failed (message on stderr), 2 bad command line.
docs: README.md (bundle format, layout, configuration)."""


INSPECT_EPILOG = """\
stopping: Ctrl-C or SIGTERM stops after the images in flight are recorded (a second one stops at once);
  exit 0 for --watch and cameras, 128+signal for files and videos (not finished: run again to resume).
cameras: when scoring is slower than the camera, the oldest waiting frame is dropped (counted as
  dropped_frames in the summary) so verdicts stay current; use --every N or --workers to drop none.
summary (stdout): results, inspected, flagged, errors, skipped_already_recorded, source_kind, stopped,
  dropped_frames, drift (the drift warning's final state), drift_warnings.
drift: when far more images are flagged than the bundle's target false-alarm rate (5x, and a binomial
  test), a warning goes to stderr and records get drift: true until the share falls below 2x."""


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


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def resolve_batch_size(batch_size: int | str, threads: int, workers: int) -> int:
    """``auto``: 1 with one intra-op thread or with workers (at one thread a batch costs more per image
    than single images, and its arena grows with it: bench/results/latency.md), otherwise 8."""
    if batch_size != "auto":
        return int(batch_size)
    return 1 if threads == 1 or workers > 1 else 8


def _positive(kind, allow_zero: bool = False):
    """An argparse type: a number of ``kind`` above 0 (at least 0 with ``allow_zero``)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if v < 0 or (v == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got {text}")
        return v
    return parse


def _port(text: str) -> int:
    """``--port``: a TCP port number, 0 (any free port) to 65535."""
    v = _positive(int, allow_zero=True)(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0..65535, got {text}")
    return v


def cmd_inspect(args: argparse.Namespace) -> int:
    import signal
    import threading

    from linewatch.runtime.inspect_run import run_inspection
    from linewatch.runtime.inspector import Inspector
    from linewatch.runtime.preprocess import DEFAULT_MAX_PIXELS

    inspector = Inspector(args.bundle, threads=args.threads, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    stop, caught = threading.Event(), []

    def on_signal(signum, frame):              # first signal: stop cleanly; second: stop now
        if stop.is_set():
            raise KeyboardInterrupt
        caught.append(signum)
        _say(f"{signal.Signals(signum).name}: stopping after the images in flight (again to stop at once)")
        stop.set()

    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        summary = run_inspection(inspector, args.source, args.out,
                                 batch_size=resolve_batch_size(args.batch_size, args.threads, args.workers),
                                 heatmaps=not args.no_heatmaps, progress=_say, workers=args.workers,
                                 watch=args.watch, every=args.every, queue_size=args.queue_size,
                                 max_images=args.max_images, poll_s=args.poll, settle_s=args.settle,
                                 idle_timeout_s=args.idle_timeout, stop=stop, fsync=args.fsync,
                                 drift_window=args.drift_window)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    result = summary.to_dict()
    if caught:
        result["stopped"] = signal.Signals(caught[0]).name
    print(json.dumps(result))
    # A signal is how a watch or a camera normally ends; for a finite source it means "not finished".
    return 128 + caught[0] if caught and summary.source_kind in ("files", "video") else 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from linewatch.runtime.adapt import adapt_bundle
    from linewatch.runtime.sources import expand_source

    good = expand_source(args.good)
    calibration = expand_source(args.calibration) if args.calibration else None
    _, summary = adapt_bundle(args.bundle, good, args.out, chain_samples=args.chain_samples,
                              calibration_paths=calibration, overwrite=args.overwrite, threads=args.threads,
                              progress=_say)
    print(json.dumps(summary))
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


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    if args.max_body_bytes <= 0 or args.max_pixels <= 0 or args.timeout <= 0 or args.threads < 1 or args.workers < 0:
        raise ValueError("--max-body-bytes, --max-pixels and --timeout must be positive, --threads at least 1, "
                         "--workers >= 0")
    # OpenCV reads its own decode limit when it is imported: set it first, so an image that claims more
    # pixels is refused before its pixel buffer is allocated (a small PNG can claim gigabytes)
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(args.max_pixels))
    from linewatch.runtime.serve import TOKEN_ENV, ServeOptions, run

    opts = ServeOptions(host=args.host, port=args.port, max_body_bytes=args.max_body_bytes, timeout_s=args.timeout,
                        threads=args.threads, workers=args.workers, max_connections=args.max_connections,
                        token=os.environ.get(TOKEN_ENV) or None, log_requests=not args.quiet,
                        max_pixels=args.max_pixels, drift_window=args.drift_window)
    if not opts.token and args.host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"linewatch serve: warning: listening on {args.host} without a token; set {TOKEN_ENV} to require one")
    return run(args.bundle, opts, announce=print_flush)


def print_flush(line: str) -> None:
    print(line, flush=True)


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
                                   "(model.onnx + manifest.json). Unless autoconfig.enabled is false, it first "
                                   "chooses the features, whitening, position code, image score and global branch "
                                   "for the product by proxy validation (README: How it decides). Progress goes to "
                                   "stderr; a JSON summary to stdout.")
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

    i = sub.add_parser("inspect", help="score images, a watched folder, a video or a camera with a bundle "
                                       "(edge runtime, no torch)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=INSPECT_EPILOG,
                       description=textwrap.fill(
                                   "Score an image, a folder (recursive), a glob, a watched folder, a video file or a "
                                   "camera. Writes OUT/results.jsonl (one JSON object per image or frame: source, "
                                   "score, threshold, anomalous, p_value, error, latency_ms, bundle, heatmap, drift), "
                                   "appended and flushed per record, and OUT/heatmaps/*.png for flagged images. "
                                   "Re-running into the same OUT resumes: whatever is recorded is skipped, so after "
                                   "a crash or kill every input ends up recorded exactly once. Progress on stderr, "
                                   "a JSON summary on stdout.", 100))
    i.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder written by `linewatch train`")
    i.add_argument("--source", required=True, metavar="SRC",
                   help="an image file, a folder (recursive), a glob such as 'cam1/*.png', a video file (.avi, .mp4, "
                        "...; frames are recorded as FILE#frame=000120), or a camera: camera:N or just N (frames "
                        "are recorded as camera:N#t=<UTC time>#frame=N)")
    i.add_argument("--out", required=True, metavar="DIR", help="output folder for results.jsonl and heat maps")
    i.add_argument("--watch", action="store_true",
                   help="SRC is a folder: keep watching it and score new images as they arrive, until Ctrl-C/SIGTERM, "
                        "--idle-timeout or --max-images. A file is taken once unchanged for --settle seconds; writers "
                        "that write to a hidden or non-image name and then rename it into place are safest")
    i.add_argument("--poll", type=_positive(float), default=0.2, metavar="S",
                   help="--watch: list the folder every S seconds (default 0.2)")
    i.add_argument("--settle", type=_positive(float, allow_zero=True), default=0.5, metavar="S",
                   help="--watch: take a file once its size and time have not changed for S seconds (default 0.5); "
                        "0 takes files as soon as they are listed (only when writers rename complete files into place)")
    i.add_argument("--idle-timeout", type=_positive(float), metavar="S",
                   help="--watch: stop when no new file has arrived for S seconds (default: never)")
    i.add_argument("--max-images", type=_positive(int), metavar="N", help="stop after recording N new images or frames")
    i.add_argument("--every", type=_positive(int), default=1, metavar="N",
                   help="video or camera: score every Nth frame (default 1: every frame)")
    i.add_argument("--batch-size", type=batch_size_arg, default="auto", metavar="N|auto",
                   help="at most N images per model call; a stream never waits to fill a batch. auto (default): 1 "
                        "with --threads 1 or --workers > 1 (at one thread batching costs time per image and memory; "
                        "bench/results/latency.md), else 8")
    i.add_argument("--threads", type=_positive(int, allow_zero=True), default=0, metavar="N", help="onnxruntime threads (default 0 = all cores)")
    i.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                   help="score N batches at once, each on a one-thread session (default 1). For throughput on a "
                        "multi-core machine over many files: --workers <cores> --batch-size 1 beat intra-op threads "
                        "in bench/results/latency.md (145 against 134 images/s on 2 cores); for the lowest latency "
                        "of single images keep 1")
    i.add_argument("--queue-size", type=_positive(int), default=8, metavar="N",
                   help="decoded images that may wait for the scorer (default 8). Files and videos: the reader waits "
                        "when it is full (backpressure); cameras: the oldest frame is dropped and counted")
    i.add_argument("--fsync", action="store_true",
                   help="fsync results.jsonl after every record (survives power loss, not only a crash; slower)")
    i.add_argument("--no-heatmaps", action="store_true", help="do not write heat-map overlays")
    i.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                   help="refuse images whose header declares more than N pixels (width x height) before decoding "
                        "them; the record gets an error and the run goes on (default 268435456 = 16384 x 16384)")
    i.add_argument("--drift-window", type=_positive(int, allow_zero=True), default=200, metavar="N",
                   help="warn of drift over the last N scored images (default 200; 0 = off)")
    i.set_defaults(func=cmd_inspect)

    ad = sub.add_parser("adapt", help="adapt a bundle to a few new good images (edge runtime, no torch)",
                       description="Few-shot on-device adaptation: encode the new good images with the bundle's graph, "
                                   "(chain bundles, --chain-samples K) run top-layer chains from their codes, rebuild the "
                                   "density's bank (same size) from the old bank and the new patches, re-set the "
                                   "threshold, and write a new bundle version whose manifest names its parent. "
                                   "Without --calibration, the threshold is the larger of the parent's (shifted by the "
                                   "adaptation's effect) and the new images' leave-one-out scores: the false-alarm target "
                                   "is then no longer guaranteed (README, `adapt`). Progress on stderr; JSON summary on stdout.")
    ad.add_argument("--bundle", required=True, metavar="BUNDLE", help="the bundle to adapt (left unchanged)")
    ad.add_argument("--good", required=True, metavar="DIR",
                   help="good images of the new condition: a folder (recursive), an image or a glob")
    ad.add_argument("--out", required=True, metavar="BUNDLE2", help="folder for the adapted bundle (must not exist)")
    ad.add_argument("--chain-samples", type=int, default=0, metavar="K",
                   help="top-layer chain samples to add (bundles trained with a CAE stack only; default 0: the new "
                        "codes only, bench/results/adapt.md)")
    ad.add_argument("--calibration", metavar="DIR",
                   help="good images taken the way the line will take them (not the --good images) to re-set the "
                        "threshold exactly (split-conformal; >= 99 images for a 1%% target)")
    ad.add_argument("--threads", type=_positive(int, allow_zero=True), default=0, metavar="N", help="onnxruntime threads (default 0 = all cores)")
    ad.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (atomically)")
    ad.set_defaults(func=cmd_adapt)

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

    s = sub.add_parser(
        "serve", help="an HTTP service that inspects images (edge runtime, no torch)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a bundle over HTTP (standard library only). Prints one JSON line to stdout once "
                    "listening ({\"listening\": URL, ...}); one log line per request goes to stderr (--quiet: none).",
        epilog="""\
endpoints:
  POST /v1/inspect   body: the encoded image (PNG/JPEG/BMP/TIFF; Content-Type image/* or
                     application/octet-stream) or multipart/form-data with a part named 'image'.
                     -> JSON verdict: source, score, threshold, anomalous, p_value, latency_ms, bundle,
                     bundle_version, server_ms, drift. ?map=1 adds heatmap_png_base64 (PNG overlay).
  POST /v1/reload    body: empty (re-read the served folder) or {"bundle": "PATH"}. The new bundle is
                     verified and opened before it replaces the old one; requests in flight finish on
                     the old one. A bundle that cannot be loaded -> 422, the old one keeps serving.
  GET  /healthz      {"status": "ok", "bundle": ID, "drift": BOOL}; open even when a token is set.
  GET  /metrics      Prometheus text format: requests, errors, latency histogram, flagged ratio,
                     recent score quantiles, drift (linewatch_drift 0/1), reloads, resident memory.

authentication:
  LINEWATCH_TOKEN    when set (environment variable), every endpoint but /healthz requires
                     'Authorization: Bearer <token>' (else 401).

limits (errors are JSON {"error": ..., "status": ...}; a bad request never stops the service):
  413 body over --max-body-bytes (from Content-Length, before reading), 411 no Content-Length,
  408 body slower than --timeout, 400 undecodable image (decoder's message) or one over
  --max-pixels (refused before its pixels are decoded), 415 non-image
  Content-Type, 404 unknown path, 405 wrong method, 503 no scoring slot within --timeout or more
  than --max-connections connections.

threads: each image runs on --threads onnxruntime intra-op threads and --workers images run at once
  (default: CPUs / threads). The default --threads 1 gives the most images per second; for the lowest
  latency of one camera on an idle station use --threads 2 --workers 1.

example:
  linewatch serve --bundle bundles/brick &
  curl -s --data-binary @part.png -H 'Content-Type: image/png' http://127.0.0.1:8080/v1/inspect

SIGTERM or SIGINT: stop accepting, let requests in flight finish (up to --timeout), exit 0.""")
    s.add_argument("--bundle", required=True, metavar="BUNDLE", help="bundle folder written by `linewatch train`")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_port, default=8080, help="TCP port, 0..65535 (default 8080; 0 = any free port)")
    s.add_argument("--max-body-bytes", type=int, default=20 * 1024 * 1024, metavar="N",
                   help="largest request body accepted (default 20971520 = 20 MiB)")
    s.add_argument("--max-pixels", type=int, default=50_000_000, metavar="N",
                   help="largest image decoded, in pixels (default 50000000); larger ones get 400")
    s.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="socket timeout, longest body upload and longest wait for a scoring slot (default 30 s)")
    s.add_argument("--threads", type=int, default=1, metavar="N", help="onnxruntime intra-op threads per image (default 1)")
    s.add_argument("--workers", type=int, default=0, metavar="N",
                   help="images decoded and scored at once (default 0 = available CPUs / --threads)")
    s.add_argument("--max-connections", type=int, default=64, metavar="N",
                   help="open connections served at once; more get 503 (default 64)")
    s.add_argument("--quiet", action="store_true", help="no log line per request on stderr")
    s.add_argument("--drift-window", type=_positive(int, allow_zero=True), default=200, metavar="N",
                   help="warn of drift over the last N scored images (default 200; 0 = off); a reload starts anew")
    s.set_defaults(func=cmd_serve)

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
             "edge runtime has only `inspect`, `audit`, `adapt` and `serve`); run it where linewatch is installed with its training extras: "
             "pip install 'linewatch[train]'")
        return 1
    except (OSError, ValueError, RuntimeError) as exc:
        _say(f"linewatch {args.command}: error: {exc}")
        from linewatch.training.config import ConfigError   # plain dataclasses: no torch, fine on the edge

        # a configuration that cannot be used is a bad command line, like a bad flag (checked before any work)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
