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
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
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


@dataclass
class Manifest:
    model: ModelSpec
    input: InputSpec
    decision: Decision
    calibration: Calibration
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
                density=dict(d.get("density", {})),
                training_data=dict(d.get("training_data", {})),
                parity=dict(d.get("parity", {})),
                lineage=dict(d.get("lineage", {})),
                chain=dict(d.get("chain", {})),
                quantization=dict(d.get("quantization", {})),
                decoder=dict(d.get("decoder", {})),
                gallery=dict(d.get("gallery", {})),
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
