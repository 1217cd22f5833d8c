"""The bundle: the contract between training and the edge.

A bundle is a folder::

    BUNDLE/
      manifest.json   versioned description (this module's :class:`Manifest`)
      model.onnx      image batch in -> image scores and patch-score map out
      ...             further files listed in the manifest (e.g. later graphs)

Every file except ``manifest.json`` is listed in ``manifest["files"]`` with its sha256 and size and
is verified on load. ``manifest.sha256`` holds the sha256 of the manifest's bytes, so a damaged
manifest is refused too (bundles written before it existed load without it). With the key
``LINEWATCH_BUNDLE_KEY`` set, ``manifest.sig`` must hold the manifest's HMAC (:mod:`.signing`).
Bundles are written to a temporary sibling folder and renamed into place, so a reader never sees a
partial bundle. A writer killed on the way leaves its sibling folders (``.NAME.tmp-PID-*``, and when
it was replacing a bundle ``.NAME.old-PID``); the next ``write_bundle`` to the same place removes them
once their process is gone, and puts a previous bundle back if the kill fell between the two renames.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import signing
from .preprocess import InputSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_DIGEST_NAME = "manifest.sha256"
BUNDLE_FORMAT = "linewatch-bundle"


class BundleError(RuntimeError):
    """A bundle that cannot be used; the message says which bundle, what is wrong and what to do."""


def linewatch_version() -> str:
    try:
        return metadata.version("linewatch")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0+unknown"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelSpec:
    """The scoring graph. ``score_output``: ``float32 (N,)``; ``map_output``: ``float32 (N, map_height, map_width)``;
    ``features_output``: ``float32 (N, map_height * map_width, d)``, the patches in the density's space
    (``""`` in bundles made before it existed)."""

    file: str = "model.onnx"
    input_name: str = "image"
    score_output: str = "score"
    map_output: str = "patch_scores"
    map_height: int = 28
    map_width: int = 28
    opset: int = 17
    precision: str = "fp32"
    backbone: str = "lite0"
    features_output: str = ""


@dataclass
class Decision:
    """How a score becomes a verdict: ``anomalous = score > threshold``.

    ``score`` aggregates the image's patch scores (``score_definition`` says how); a patch score is
    the patch feature's negative log-density (nats) under the Parzen density of good-patch features.
    """

    threshold: float
    target_false_alarm_rate: float
    score_definition: str = "mean of the top-k patch scores; patch score = -log p(patch feature), nats"


@dataclass
class Calibration:
    """Conformal calibration figures. ``scores``: image scores of good images the density did not see
    (out-of-fold training images, or held-out validation images under the final model; ``method`` says which)."""

    method: str
    scores: list[float]
    target_reachable: bool
    heatmap_low: float
    folds: int = 0
    false_alarm_rate_on_calibration: float = 0.0


IMAGE_SCORE_MAX, IMAGE_SCORE_TOP_K = "max", "top-k mean"


def image_score_name(top_k: int) -> str:
    """The :attr:`Scoring.image_score` that goes with ``top_k``: ``"max"`` for 1, else ``"top-k mean"``."""
    return IMAGE_SCORE_MAX if top_k == 1 else IMAGE_SCORE_TOP_K


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _rule(says: str, ok: Callable[[Any], bool], cast: Callable[[Any], Any] = lambda v: v) -> dict[str, Any]:
    """A :class:`Scoring` field's check: ``ok(value)`` must hold (else the error says it must be ``says``),
    then ``cast(value)`` is stored."""
    return {"says": says, "ok": ok, "cast": cast}


@dataclass
class Scoring:
    """How the graph scores, as the runtime needs it (``manifest["scoring"]``): read it here, never from
    ``lineage.config``. ``top_k``: the image score is the mean of the ``top_k`` largest patch scores
    (``image_score`` ``"max"`` when 1, else ``"top-k mean"``; ``linewatch.runtime.density``);
    ``feature_strides``, ``patch_pool``, ``lite0_blocks`` (``None`` for other backbones): the level-1
    features; ``whiten``, ``whiten_shrinkage``: their sphering; ``density_level``: the representation
    level the density lives at; ``bandwidth``: the kernel std, feature units; ``global_*``: whether the graph
    adds the global branch's term to the image score, and its fusion figures (nats); ``position_weight``: the
    weight of the map coordinates appended to each density row (0 = none).

    To add a field: declare it below with ``metadata=_rule(...)`` and a default (the value bundles written
    before it were made with, so they still load); :meth:`from_dict` then checks it, and
    :func:`_scoring_from_config` derives it for bundles that predate this section.
    """

    top_k: int = field(metadata=_rule("an integer >= 1", lambda v: _is_int(v) and v >= 1))
    image_score: str = field(metadata=_rule(f"{IMAGE_SCORE_MAX!r} or {IMAGE_SCORE_TOP_K!r}",
                                            lambda v: v in (IMAGE_SCORE_MAX, IMAGE_SCORE_TOP_K)))
    feature_strides: list[int] = field(metadata=_rule(
        "a non-empty list of positive integers",
        lambda v: isinstance(v, list) and bool(v) and all(_is_int(s) and s >= 1 for s in v), list))
    patch_pool: int = field(metadata=_rule("an odd integer >= 1", lambda v: _is_int(v) and v >= 1 and v % 2 == 1))
    lite0_blocks: int | None = field(metadata=_rule("an integer >= 1, or null for a backbone other than Lite0",
                                                    lambda v: v is None or (_is_int(v) and v >= 1)))
    whiten: bool = field(metadata=_rule("true or false", lambda v: isinstance(v, bool)))
    whiten_shrinkage: float = field(metadata=_rule("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1,
                                                   float))
    density_level: int = field(metadata=_rule("an integer >= 1", lambda v: _is_int(v) and v >= 1))
    bandwidth: float = field(metadata=_rule("a positive number", lambda v: _is_number(v) and v > 0, float))
    # the global branch (training/global_branch.py): the graph adds weight * relu((s - offset) / scale) to the
    # image score, s = 0.5 x the squared Mahalanobis distance of the patches' per-channel mean and spread
    global_branch: bool = field(default=False, metadata=_rule("true or false", lambda v: isinstance(v, bool)))
    global_offset: float = field(default=0.0, metadata=_rule("a number", _is_number, float))
    global_scale: float = field(default=1.0, metadata=_rule("a positive number", lambda v: _is_number(v) and v > 0,
                                                            float))
    global_weight: float = field(default=0.0, metadata=_rule("a number >= 0", lambda v: _is_number(v) and v >= 0,
                                                             float))
    # the position code (training/position.py): weight x each patch's map coordinates in [-1, 1] appended to its
    # density row (patch_features then has 2 more columns); 0 = none
    position_weight: float = field(default=0.0, metadata=_rule("a number >= 0", lambda v: _is_number(v) and v >= 0,
                                                               float))
    # (fields added later go here, each with a default)

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> "Scoring":
        """Check and type ``manifest["scoring"]``; :class:`BundleError` naming the field otherwise."""
        redo = "re-export the bundle with this linewatch"
        if not isinstance(d, dict):
            raise BundleError(f"{where}: scoring is not a JSON object; {redo}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise BundleError(f"{where}: scoring has unknown field(s) {unknown} (written by a newer linewatch?); "
                              f"upgrade linewatch on this station or {redo}")
        values = {}
        for name, f in known.items():
            if name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise BundleError(f"{where}: scoring.{name} is missing; {redo}")
                continue
            rule = f.metadata
            if not rule["ok"](d[name]):
                raise BundleError(f"{where}: scoring.{name} must be {rule['says']}, got {d[name]!r}; {redo}")
            values[name] = rule["cast"](d[name])
        out = cls(**values)
        if out.image_score != image_score_name(out.top_k):
            raise BundleError(f"{where}: scoring.image_score {out.image_score!r} contradicts scoring.top_k "
                              f"{out.top_k} (it must be {image_score_name(out.top_k)!r}); {redo}")
        return out

    @classmethod
    def from_manifest_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Scoring | None":
        """The manifest's scoring section; for bundles written before it existed, derived from
        ``lineage.config`` (:func:`_scoring_from_config`); ``None`` when the manifest has neither."""
        if d.get("scoring") is not None:
            return cls.from_dict(d["scoring"], where)
        config = (d.get("lineage") or {}).get("config")
        if not isinstance(config, dict):
            return None
        return cls.from_dict(_scoring_from_config(d, config), f"{where} (scoring derived from lineage.config)")


# What a bundle was trained with when its lineage.config predates a key: the first linewatch scored an
# image by its largest patch score, used both taps of the backbone with 3 x 3 pooling, all 11 Lite0
# blocks and no whitening, and put the density on level 1.
_BEFORE_THE_KEY: dict[str, Any] = {"top_k": 1, "patch_pool": 3, "lite0_blocks": 11, "whiten": False,
                                   "whiten_shrinkage": 0.0, "level": 1}
_FIRST_STRIDES = {"lite0": [8, 16], "conv_ae": [2, 4]}


def _scoring_from_config(d: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The scoring section of a manifest written before it existed, from its ``lineage.config`` (the
    training configuration) and its density figures; :meth:`Scoring.from_dict` checks the result."""
    def section(name: str) -> dict[str, Any]:
        v = config.get(name)
        return v if isinstance(v, dict) else {}

    model, density, scoring, spec = section("model"), section("density"), section("scoring"), d.get("model") or {}
    backbone = model.get("backbone", spec.get("backbone", "lite0"))
    top_k = scoring.get("top_k", _BEFORE_THE_KEY["top_k"])
    if _is_int(top_k):   # the graph never averages more patches than the map has
        top_k = min(top_k, int(spec.get("map_height", 28)) * int(spec.get("map_width", 28)))
    figures = d.get("density") or {}
    return {"top_k": top_k, "image_score": image_score_name(top_k),
            "feature_strides": model.get("feature_strides", _FIRST_STRIDES.get(backbone)),
            "patch_pool": model.get("patch_pool", _BEFORE_THE_KEY["patch_pool"]),
            "lite0_blocks": model.get("lite0_blocks", _BEFORE_THE_KEY["lite0_blocks"]) if backbone == "lite0" else None,
            "whiten": density.get("whiten", _BEFORE_THE_KEY["whiten"]),
            "whiten_shrinkage": density.get("whiten_shrinkage", _BEFORE_THE_KEY["whiten_shrinkage"]),
            "density_level": figures.get("level", density.get("level", _BEFORE_THE_KEY["level"])),
            "bandwidth": figures.get("bandwidth")}


@dataclass
class Manifest:
    model: ModelSpec
    input: InputSpec
    decision: Decision
    calibration: Calibration
    # how the graph scores (typed; derived from lineage.config for bundles written before it existed, None
    # only when a manifest has neither)
    scoring: Scoring | None = None
    density: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    chain: dict[str, Any] = field(default_factory=dict)   # top-layer chain graph (empty without one)
    # int8 bundles: how the graph was quantised and the int8-vs-fp32 accuracy gate's figures (empty for
    # fp32). Optional and additive: manifests without it load, and older readers ignore it (no schema bump).
    quantization: dict[str, Any] = field(default_factory=dict)
    # pixel decoder (decoder.onnx: level-1 rows -> image in [0, 1]) and augment start maps; empty without one
    decoder: dict[str, Any] = field(default_factory=dict)
    # thumbnails + representations of good training images for `linewatch audit` (gallery.npz; empty without one)
    gallery: dict[str, Any] = field(default_factory=dict)
    # how train chose the scoring configuration: every candidate, its proxy-validation figures, the choice
    # (only the reason when it skipped itself; empty when it was off or the bundle predates it; the runtime
    # never reads it)
    selection: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = BUNDLE_FORMAT
    linewatch_version: str = field(default_factory=linewatch_version)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"] = self.input.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: the manifest is not a JSON object")
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: not a linewatch bundle manifest (format={d.get('format')!r})")
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise BundleError(f"{where}: schema_version is missing or not an integer")
        if version > SCHEMA_VERSION:
            raise BundleError(f"{where}: manifest schema {version} is newer than this linewatch understands "
                              f"({SCHEMA_VERSION}); upgrade linewatch on this station to load it")
        theirs = str(d.get("linewatch_version", "0")).split(".")[0]
        ours = linewatch_version().split(".")[0]
        if theirs != ours:
            raise BundleError(f"{where}: made by linewatch {d.get('linewatch_version')}, this is {linewatch_version()}; "
                              "major versions differ: re-export the bundle with this version")
        try:
            return cls(
                model=ModelSpec(**d["model"]),
                input=InputSpec.from_dict(d["input"]),
                decision=Decision(**d["decision"]),
                calibration=Calibration(**d["calibration"]),
                scoring=Scoring.from_manifest_dict(d, where),
                density=dict(d.get("density", {})),
                training_data=dict(d.get("training_data", {})),
                parity=dict(d.get("parity", {})),
                lineage=dict(d.get("lineage", {})),
                chain=dict(d.get("chain", {})),
                quantization=dict(d.get("quantization", {})),
                decoder=dict(d.get("decoder", {})),
                gallery=dict(d.get("gallery", {})),
                selection=dict(d.get("selection", {})),
                files=dict(d["files"]),
                schema_version=version,
                format=d["format"],
                linewatch_version=d["linewatch_version"],
                created_utc=d.get("created_utc", ""),
            )
        except KeyError as exc:
            raise BundleError(f"{where}: required field {exc} is missing; the bundle is incomplete, re-export it") from exc
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: a field has the wrong form ({exc}); re-export the bundle") from exc


@dataclass
class Bundle:
    """A verified bundle on disk. Use :meth:`load`; ``id`` is the manifest's sha256 (first 16 hex digits);
    ``signature`` is ``"verified"``, ``"none"`` or ``"present, not checked (...)"`` (:mod:`.signing`)."""

    path: Path
    manifest: Manifest
    id: str
    signature: str = signing.UNSIGNED

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True, check_signature: bool = True) -> "Bundle":
        """Read ``manifest.json`` and, with ``verify``, check every listed file's size and sha256.

        With ``check_signature`` and ``LINEWATCH_BUNDLE_KEY`` set, the manifest's signature is checked
        before anything in it is read; a missing or wrong one is refused (:mod:`.signing`).
        """
        root = Path(path)
        mpath = root / MANIFEST_NAME
        if not root.is_dir():
            left = sorted(root.parent.glob(sibling_prefix(root, "old") + "*")) if root.name else []
            if left:
                raise BundleError(f"{root}: no such bundle folder, but {left[0]} holds the bundle that was there "
                                  "before a replacement was interrupted; rename it back to "
                                  f"{root.name} (or write the bundle again)")
            if root.is_file() and root.suffix == ".ckpt":
                raise BundleError(f"{root}: is a training checkpoint, not a bundle; pass the bundle folder beside it, "
                                  f"or write one with `linewatch export --checkpoint {root} --out BUNDLE`")
            if root.is_file():
                raise BundleError(f"{root}: is a file, not a bundle folder; pass the folder written by `linewatch train`")
            raise BundleError(f"{root}: no such bundle folder; pass the folder written by `linewatch train`")
        if not mpath.is_file():
            raise BundleError(f"{root}: {MANIFEST_NAME} is missing; this is not a complete linewatch bundle")
        raw = mpath.read_bytes()
        status = signing.UNSIGNED
        if check_signature:
            try:
                key = signing.key_from_env()
            except signing.SigningError as exc:
                raise BundleError(f"{root}: cannot check the bundle's signature: {exc}") from exc
            try:
                status = signing.check_signature(root, raw, key)
            except signing.SigningError as exc:
                raise BundleError(str(exc)) from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:   # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            raise BundleError(f"{mpath}: not valid JSON ({exc}); the bundle is damaged, copy it again") from exc
        manifest = Manifest.from_dict(data, where=str(mpath))
        digest = root / MANIFEST_DIGEST_NAME
        if digest.is_file() and digest.read_bytes().strip() != hashlib.sha256(raw).hexdigest().encode():
            raise BundleError(f"{mpath}: checksum mismatch with {MANIFEST_DIGEST_NAME}; the manifest was changed or "
                              "damaged in transit; copy the bundle again from its source")
        if manifest.model.file not in manifest.files:
            raise BundleError(f"{mpath}: the model file {manifest.model.file!r} is not listed under files")
        if verify:
            for name, info in manifest.files.items():
                f = root / name
                if Path(name).is_absolute() or ".." in Path(name).parts or not isinstance(info, dict):
                    raise BundleError(f"{mpath}: the listed file {name!r} is outside the bundle folder or has no "
                                      "checksum; the manifest is damaged or forged, copy the bundle again from its source")
                if not f.is_file():
                    raise BundleError(f"{root}: file {name!r} listed in the manifest is missing; copy the whole bundle folder")
                if f.stat().st_size != info.get("bytes") or sha256_file(f) != info.get("sha256"):
                    raise BundleError(f"{f}: checksum mismatch with the manifest; the file was changed or damaged "
                                      "in transit; copy the bundle again from its source")
        return cls(path=root, manifest=manifest, id=hashlib.sha256(raw).hexdigest()[:16], signature=status)

    def file(self, name: str) -> Path:
        return self.path / name


def seal_manifest(root: str | os.PathLike) -> Path:
    """Write ``root/manifest.sha256``: the sha256 (hex) of ``root/manifest.json`` as it is now."""
    path = Path(root) / MANIFEST_DIGEST_NAME
    path.write_text(sha256_file(Path(root) / MANIFEST_NAME) + "\n")
    return path


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``mkdir``/``open`` would give. ``mkdtemp``/``mkstemp`` make
    private 0700/0600 entries, which would hide a bundle from the (non-root) user of an edge container."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


def write_bundle(out: str | os.PathLike, manifest: Manifest, files: dict[str, str | os.PathLike | bytes],
                 overwrite: bool = False, before_rename: Callable[[], None] | None = None) -> Bundle:
    """Write a bundle atomically: files go to a temporary sibling folder that is renamed to ``out``.

    Writes ``manifest.sha256`` and, when ``LINEWATCH_BUNDLE_KEY`` is set, signs the manifest.

    Args:
        out: destination folder (must not exist unless ``overwrite``).
        manifest: its ``files`` entry is filled in here.
        files: name -> source path (copied) or bytes.
        before_rename: called once the temporary folder is complete, just before the rename (tests use
            it to kill the writer there).
    """
    out = Path(out)
    try:
        key = signing.key_from_env()
    except signing.SigningError as exc:
        raise BundleError(f"{out}: not written: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_interrupted_writes(out)           # may put back a previous bundle, which the check below then sees
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; choose another --out or remove it first")
    tmp = Path(tempfile.mkdtemp(prefix=f"{sibling_prefix(out, 'tmp')}{os.getpid()}-", dir=out.parent))
    try:
        os.chmod(tmp, umask_mode(0o777))
        manifest.files = {}
        for name, src in files.items():
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, (bytes, bytearray)):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
            manifest.files[name] = {"sha256": sha256_file(dst), "bytes": dst.stat().st_size}
        with open(tmp / MANIFEST_NAME, "w") as f:
            json.dump(manifest.to_dict(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        seal_manifest(tmp)
        if key is not None:
            signing.write_signature(tmp, key, MANIFEST_NAME)
        if before_rename is not None:
            before_rename()
        if out.exists():
            old = out.with_name(f"{sibling_prefix(out, 'old')}{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle.load(out)


def sibling_prefix(out: Path, kind: str) -> str:
    """Name prefix of ``write_bundle``'s hidden folders beside ``out``: ``kind`` ``tmp`` (being written,
    ``.OUT.tmp-PID-xxxx``) or ``old`` (the bundle being replaced, ``.OUT.old-PID``)."""
    return f".{out.name}.{kind}-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # someone else's live process
        return True
    return True


def dead_writer_pid(sibling: Path, prefix: str) -> int | None:
    """The PID in a writer's folder name ``PREFIX<pid>[-...]`` when that process is gone; None when the
    name has no PID, or the PID is this process or another live one."""
    head = sibling.name[len(prefix):].split("-", 1)[0]
    if not head.isdigit():
        return None
    pid = int(head)
    return None if pid == os.getpid() or pid_alive(pid) else pid


def sweep_interrupted_writes(out: str | os.PathLike) -> list[Path]:
    """Clean up after ``write_bundle`` calls to ``out`` whose process died (SIGKILL, power loss).

    Their temporary folders are removed. A ``.OUT.old-PID`` folder is the bundle that was at ``out``
    before an interrupted replacement: it is renamed back when ``out`` is missing (the kill fell
    between the two renames), and removed otherwise. Folders of live processes are left alone.

    Returns:
        the sibling folders removed or restored.
    """
    out = Path(out)
    done = []
    for kind in ("old", "tmp"):
        prefix = sibling_prefix(out, kind)
        for sib in sorted(out.parent.glob(prefix + "*")):
            if not sib.is_dir() or dead_writer_pid(sib, prefix) is None:
                continue
            if kind == "old" and not out.exists():
                sib.rename(out)
            else:
                shutil.rmtree(sib, ignore_errors=True)
            done.append(sib)
    return done
