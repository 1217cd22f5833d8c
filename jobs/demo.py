"""``linewatch demo``: build the demo textures, train a bundle per texture, inspect its test split, report."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.inspect_run import read_results, run_inspection
from ..runtime.inspector import Inspector
from ..training.config import TrainConfig, load_config
from ..training.data import discover
from ..training.demo_data import TEXTURES, DemoSpec, build_demo_dataset
from ..training.metrics import auroc
from .train import run_train


@dataclass
class TextureReport:
    texture: str
    image_auroc: float
    false_alarm_rate: float           # flagged fraction of good test images
    target_false_alarm_rate: float
    n_good: int
    n_defect: int
    detected: float                   # flagged fraction of defective test images
    train_seconds: float
    bundle: str
    results: str


def evaluate_results(data_root: Path, results_file: Path) -> tuple[float, float, float, int, int]:
    """Image AUROC, false-alarm rate on good images, detection rate, counts, from an inspect run."""
    ds = discover(data_root)
    label = {str(t.path): t.label for t in ds.test}
    recs = [r for r in read_results(results_file) if r.get("error") is None and r["source"] in label]
    y = np.array([label[r["source"]] for r in recs])
    s = np.array([r["score"] for r in recs])
    flagged = np.array([r["anomalous"] for r in recs], dtype=bool)
    far = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    det = float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")
    return auroc(y, s), far, det, int((y == 0).sum()), int((y == 1).sum())


def run_demo(out: str | Path, textures: tuple[str, ...] = TEXTURES, spec: DemoSpec = DemoSpec(),
             config: TrainConfig | str | Path | None = None, progress: Callable[[str], None] | None = None
             ) -> list[TextureReport]:
    say = progress or (lambda _m: None)
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    out = Path(out)
    say(f"building demo data in {out / 'data'}")
    folders = build_demo_dataset(out / "data", textures, spec, progress=say)
    reports = []
    for tex in textures:
        say(f"== {tex}: training")
        t0 = time.perf_counter()
        bundle_dir = out / "bundles" / tex
        bundle, _ = run_train(folders[tex], bundle_dir, cfg, say, overwrite=True)
        seconds = time.perf_counter() - t0
        res_dir = out / "results" / tex
        if (res_dir / "results.jsonl").exists():
            (res_dir / "results.jsonl").unlink()
        say(f"== {tex}: inspecting {folders[tex] / 'test'}")
        summary = run_inspection(Inspector(bundle), str(folders[tex] / "test"), res_dir, progress=say)
        a, far, det, n_good, n_def = evaluate_results(folders[tex], summary.results)
        reports.append(TextureReport(tex, a, far, bundle.manifest.decision.target_false_alarm_rate, n_good, n_def,
                                     det, round(seconds, 1), str(bundle_dir), str(summary.results)))
    return reports


def format_reports(reports: list[TextureReport]) -> str:
    lines = ["texture   image AUROC   false alarms (good test)   target   defects flagged   train s",
             "-------   -----------   ------------------------   ------   ---------------   -------"]
    for r in reports:
        lines.append(f"{r.texture:<9} {r.image_auroc:>11.3f}   {r.false_alarm_rate:>8.1%} of {r.n_good:<4} good      "
                     f"{r.target_false_alarm_rate:>6.1%}   {r.detected:>6.1%} of {r.n_defect:<4}   {r.train_seconds:>7.1f}")
    lines.append("")
    for r in reports:
        lines.append(f"{r.texture}: bundle {r.bundle}\n    results {r.results}")
    return "\n".join(lines)
