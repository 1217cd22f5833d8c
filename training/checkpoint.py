"""Training checkpoints: what ``linewatch export`` needs to write a bundle again without refitting.

``linewatch train`` writes one checkpoint file per bundle, by default ``BUNDLE.ckpt``: a *sibling*
of the bundle folder, never inside it (the bundle's files are all checksummed by its manifest, and
the checkpoint does not ship to the edge). It holds:

* ``detector``: the fitted :class:`~linewatch.training.fit.FittedDetector` (scoring graph as torch
  modules, input spec, calibrator, bandwidth, heat-map scale, figures, optional chain);
* ``config``: the full training configuration (``TrainConfig.to_dict()``);
* ``training_data``: the manifest's ``training_data`` section (source, fingerprint, skipped files);
* three image sets, each a list of :class:`StoredImage` holding the *encoded file bytes* (PNG, JPEG
  ...) as read at training time, so export decodes them with the runtime's own
  :func:`~linewatch.runtime.preprocess.decode_image` and ``preprocess`` and sees exactly the model
  inputs training saw, even when the data folder has moved:

  - ``train_images``: up to ``2 * export.int8_calibration_images`` training images spread evenly over
    the list (int8 quantisation calibration; also the int8 gate's fallback data, see
    ``linewatch.jobs.export``);
  - ``validation_images``: every held-out ``validation/good`` image that training read (the
    split-conformal calibration set; re-scored to re-derive an int8 bundle's threshold);
  - ``test_images``: up to :data:`MAX_TEST_IMAGES` labelled test images spread evenly over the list
    (torch/onnxruntime parity and the int8 gate's held-out data).

The file is ``torch.save`` of a plain dict (``format``, ``version``, ``linewatch_version``, ...).
Loading unpickles torch modules, so **load only checkpoints you (or your training job) wrote**, as
with any pickle. A checkpoint from another major version of linewatch is refused: re-run ``train``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runtime.bundle import linewatch_version, umask_mode
from ..runtime.preprocess import ImageError, InputSpec, decode_image, preprocess
from .config import TrainConfig, config_from_stored
from .data import Dataset
from .fit import FittedDetector

CHECKPOINT_FORMAT = "linewatch-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".ckpt"
MAX_TEST_IMAGES = 200        # labelled test images kept (spread over the list) for parity and the int8 gate


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file, what is wrong and what to do."""


@dataclass
class StoredImage:
    """One image as its encoded file bytes. ``name``: path relative to the dataset root (for messages);
    ``defect_type``: ``"good"`` or the test folder's defect type."""

    name: str
    data: bytes
    defect_type: str = "good"

    @property
    def label(self) -> int:
        """0 = good, 1 = defective."""
        return 0 if self.defect_type == "good" else 1


@dataclass
class Checkpoint:
    detector: FittedDetector
    config: TrainConfig
    training_data: dict[str, Any]
    train_images: list[StoredImage] = field(default_factory=list)
    validation_images: list[StoredImage] = field(default_factory=list)
    test_images: list[StoredImage] = field(default_factory=list)
    linewatch_version: str = field(default_factory=linewatch_version)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path: Path | None = None      # where it was loaded from or saved to (not stored)


def default_checkpoint_path(bundle: str | os.PathLike) -> Path:
    """``BUNDLE`` -> ``BUNDLE.ckpt`` next to it (``out/brick`` -> ``out/brick.ckpt``)."""
    b = Path(bundle)
    return b.with_name(b.name + CHECKPOINT_SUFFIX)


def spread(n: int, k: int) -> np.ndarray:
    """Indices of ``min(n, k)`` items spread evenly over ``range(n)`` (first and last included), ``int (m,)``."""
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def _stored(path: Path, root: Path, defect_type: str = "good") -> StoredImage:
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    return StoredImage(rel, path.read_bytes(), defect_type)


def make_checkpoint(detector: FittedDetector, config: TrainConfig, dataset: Dataset, train_used: list[Path],
                    validation_used: list[Path], training_data: dict[str, Any]) -> Checkpoint:
    """Collect a checkpoint after fitting. ``train_used`` / ``validation_used``: the images that were
    read successfully, in the order the detector saw them. Test images that cannot be read now are
    left out (export reports decoding failures of the rest)."""
    root = dataset.root
    k = 2 * config.export.int8_calibration_images
    train = [_stored(train_used[i], root) for i in spread(len(train_used), k)]
    validation = [_stored(p, root) for p in validation_used]
    test = []
    for i in spread(len(dataset.test), MAX_TEST_IMAGES):
        t = dataset.test[i]
        try:
            test.append(_stored(t.path, root, t.defect_type))
        except OSError:
            continue
    return Checkpoint(detector, config, dict(training_data), train, validation, test)


def _images_to_dicts(images: list[StoredImage]) -> list[dict[str, Any]]:
    return [{"name": s.name, "data": s.data, "defect_type": s.defect_type} for s in images]


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary sibling file, then rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "linewatch_version": ckpt.linewatch_version, "created_utc": ckpt.created_utc,
        "detector": ckpt.detector, "config": ckpt.config.to_dict(), "training_data": ckpt.training_data,
        "images": {"train": _images_to_dicts(ckpt.train_images),
                   "validation": _images_to_dicts(ckpt.validation_images),
                   "test": _images_to_dicts(ckpt.test_images)},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    ckpt.path = path
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; raises :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        hint = (" (that is a folder; the checkpoint is the file BUNDLE.ckpt next to a bundle folder)"
                if path.is_dir() else "")
        raise CheckpointError(f"{path}: no such checkpoint file{hint}; `linewatch train` writes one next to the "
                              "bundle as BUNDLE.ckpt (or where --checkpoint says)")
    try:
        d = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # zip/pickle errors come in many types
        raise CheckpointError(f"{path}: not a readable linewatch checkpoint ({type(exc).__name__}: {exc}); "
                              "re-run `linewatch train` to write a new one") from exc
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a linewatch checkpoint (format={d.get('format') if isinstance(d, dict) else None!r})")
    version = d.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is newer than this linewatch understands "
                              f"({CHECKPOINT_VERSION}); export with the linewatch that trained it")
    theirs, ours = str(d.get("linewatch_version", "0")).split(".")[0], linewatch_version().split(".")[0]
    if theirs != ours:
        raise CheckpointError(f"{path}: written by linewatch {d.get('linewatch_version')}, this is "
                              f"{linewatch_version()}; major versions differ: re-run `linewatch train`")
    try:
        images = d["images"]
        ckpt = Checkpoint(
            detector=d["detector"], config=config_from_stored(d["config"], where=f"{path} (config)"),
            training_data=dict(d["training_data"]),
            train_images=[StoredImage(**s) for s in images["train"]],
            validation_images=[StoredImage(**s) for s in images["validation"]],
            test_images=[StoredImage(**s) for s in images["test"]],
            linewatch_version=d["linewatch_version"], created_utc=d.get("created_utc", ""), path=path)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint is incomplete ({exc!r} missing or malformed); "
                              "re-run `linewatch train`") from exc
    if not isinstance(ckpt.detector, FittedDetector):
        raise CheckpointError(f"{path}: the checkpoint holds no fitted detector; re-run `linewatch train`")
    return ckpt


def decode_stored(images: list[StoredImage], spec: InputSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode and preprocess stored images exactly as the runtime does.

    Returns model inputs ``float32 (N, C, H, W)``, labels ``int64 (N,)`` (0 good, 1 defective) of the
    images that decoded, and one message per image that did not.
    """
    arrays, labels, errors = [], [], []
    for s in images:
        try:
            arrays.append(preprocess(decode_image(s.data, source=s.name), spec, source=s.name))
            labels.append(s.label)
        except ImageError as exc:
            errors.append(str(exc))
    x = np.stack(arrays) if arrays else np.zeros((0, spec.channels, spec.height, spec.width), np.float32)
    return x, np.asarray(labels, dtype=np.int64), errors
