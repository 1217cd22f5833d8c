"""Reviewers' verdicts on inspected images: the file ``linewatch audit`` exports and ``retrain`` reads.

The file is JSON lines, one object per reviewed image::

    {"source": "<path as recorded in results.jsonl>", "label": "defect" | "good",
     "score": <float>, "bundle": "<bundle id>", "reviewed_utc": "<ISO 8601>"}

``label: "good"`` means the image shows a good part: if the bundle flagged it, it was a false alarm.
``label: "defect"`` confirms a defect. ``score`` and ``bundle`` are what the reviewed bundle said.

Reading is strict: a line that is not a JSON object, lacks a field, has an extra one or a value of the
wrong type stops the read with the line number and what is wrong (a half-valid file usually means the
wrong file). Blank lines are allowed. A later verdict for the same source replaces an earlier one (a
reviewer changed their mind); :class:`VerdictSet` counts how often that happened.

Sources are resolved as recorded: an absolute path as is; a relative one against the current folder,
then against the verdict file's folder. Verdicts whose image no longer exists are reported and skipped.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

LABELS = ("defect", "good")
FIELDS = {"source": str, "label": str, "score": (int, float), "bundle": str, "reviewed_utc": str}


class VerdictError(ValueError):
    """A verdict file that cannot be used; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class ReviewVerdict:
    """One reviewed image. ``path``: the resolved image file; ``line``: 1-based line in the verdict file."""

    source: str
    label: str
    score: float
    bundle: str
    reviewed_utc: str
    path: Path
    line: int

    @property
    def is_good(self) -> bool:
        return self.label == "good"


@dataclass
class VerdictSet:
    """The usable verdicts of one file, in file order (one per source), and what was set aside."""

    file: Path
    verdicts: list[ReviewVerdict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # "line N: <source>: no such file"
    replaced: int = 0                                         # earlier verdicts overridden by a later line
    bundles: dict[str, int] = field(default_factory=dict)     # bundle id -> verdict count

    @property
    def good(self) -> list[ReviewVerdict]:
        return [v for v in self.verdicts if v.label == "good"]

    @property
    def defect(self) -> list[ReviewVerdict]:
        return [v for v in self.verdicts if v.label == "defect"]


def _check_record(obj: object, where: str) -> dict:
    if not isinstance(obj, dict):
        raise VerdictError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = sorted(set(FIELDS) - set(obj))
    if missing:
        raise VerdictError(f"{where}: missing field(s) {', '.join(missing)}; each line needs "
                           f"{', '.join(FIELDS)}")
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        raise VerdictError(f"{where}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(FIELDS)}")
    for name, kind in FIELDS.items():
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise VerdictError(f"{where}: field {name!r} must be a {'number' if name == 'score' else 'string'}, "
                               f"got {json.dumps(value)}")
    if not obj["source"]:
        raise VerdictError(f"{where}: field 'source' is empty")
    if obj["label"] not in LABELS:
        raise VerdictError(f"{where}: field 'label' must be \"defect\" or \"good\" (\"good\" = a false alarm), "
                           f"got {json.dumps(obj['label'])}")
    if not math.isfinite(float(obj["score"])):
        raise VerdictError(f"{where}: field 'score' must be a finite number, got {obj['score']}")
    try:
        datetime.fromisoformat(obj["reviewed_utc"].replace("Z", "+00:00"))
    except ValueError:
        raise VerdictError(f"{where}: field 'reviewed_utc' is not an ISO 8601 time: "
                           f"{json.dumps(obj['reviewed_utc'])}") from None
    return obj


def resolve_source(source: str, verdict_file: Path) -> Path | None:
    """The image file a recorded ``source`` names, or ``None`` if it no longer exists."""
    p = Path(source)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, verdict_file.parent / p]
    for c in candidates:
        if c.is_file():
            return c
    return None


def read_verdicts(path: str | os.PathLike) -> VerdictSet:
    """Read and validate a verdict file; see the module docstring. Raises :class:`VerdictError`."""
    path = Path(path)
    if not path.is_file():
        raise VerdictError(f"{path}: no such verdict file; `linewatch audit` exports one from the review page")
    by_source: dict[str, ReviewVerdict] = {}
    out = VerdictSet(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise VerdictError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            rec = _check_record(obj, where)
            out.bundles[rec["bundle"]] = out.bundles.get(rec["bundle"], 0) + 1
            resolved = resolve_source(rec["source"], path)
            if rec["source"] in by_source:
                out.replaced += 1
                del by_source[rec["source"]]
            if resolved is None:
                out.missing.append(f"line {n}: {rec['source']}: no such file (moved or deleted); skipped")
                continue
            by_source[rec["source"]] = ReviewVerdict(rec["source"], rec["label"], float(rec["score"]),
                                                     rec["bundle"], rec["reviewed_utc"], resolved, n)
    if not out.bundles:
        raise VerdictError(f"{path}: the file holds no verdicts")
    out.verdicts = sorted(by_source.values(), key=lambda v: v.line)
    return out


def write_verdicts(path: str | os.PathLike, records: list[dict]) -> Path:
    """Write verdict records (dicts with exactly the five fields) as JSON lines; used by tests and tools."""
    path = Path(path)
    for i, r in enumerate(records, start=1):
        _check_record(r, f"record {i}")
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
