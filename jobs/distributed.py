"""Scale-out with Ray (optional extra ``scale``): archive scoring and level-1 feature extraction in Ray actors.

Why Ray *core* actors and not ``ray.data``: the work is a list of image paths cut into fixed chunks, and
the results must come back in input order (``results.jsonl`` resumes by source; the fit must see images
in the single-process order to be identical). An :class:`ray.util.ActorPool` does exactly that with the
base ``ray`` wheel (about 240 MB), whereas ``ray[data]`` adds pandas and pyarrow for nothing used here.

Each actor is pinned to one CPU and one thread (onnxruntime ``intra_op_num_threads=1``,
``torch.set_num_threads(1)``), so ``workers`` actors use ``workers`` cores on one machine or spread
over a cluster. Paths are passed, not pixels: the bundle folder and the images must be readable at the
same path on every node (a shared file system), as they are in local mode.

:func:`ray_session` starts a local Ray instance (no dashboard, no usage reporting, nothing but
loopback traffic) unless one is already running or ``RAY_ADDRESS`` names a cluster.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

INSTALL_HINT = "the Ray engine needs the optional extra: pip install 'linewatch[scale]' (or -r requirements-scale.txt)"


def import_ray():
    """``ray``, or an ImportError that says how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # never phone home (offline machines)
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{exc}; {INSTALL_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[object]:
    """A Ray session for the duration of the block. Reuses a running one (e.g. a test's); otherwise
    connects to ``RAY_ADDRESS`` if set, else starts a local instance with ``num_cpus`` CPUs (default:
    all) and stops it afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def chunks(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last may be shorter)."""
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _pin_one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


class _ScoreWorker:
    """Actor body: one :class:`~linewatch.runtime.inspector.Inspector` with a one-thread session."""

    def __init__(self, bundle: str, max_pixels: int | None = None):
        _pin_one_thread()
        from ..runtime.inspector import Inspector

        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        self.inspector = Inspector(bundle, threads=1, **kwargs)

    def bundle_id(self) -> str:
        return self.inspector.bundle.id

    def score(self, paths: list[str]) -> list[dict]:
        """Verdict records (``Verdict.to_dict()``) of ``paths``, in order, scored as one batch."""
        return [v.to_dict() for v, _img, _map in self.inspector.inspect_paths(paths, batch_size=len(paths))]


class RayScorer:
    """``workers`` one-thread scoring actors of one bundle. Call inside :func:`ray_session`."""

    def __init__(self, bundle: str | os.PathLike, workers: int = 2):
        ray = import_ray()
        from ray.util import ActorPool

        self._ray = ray
        actor = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(_ScoreWorker)
        self.actors = [actor.remote(str(Path(bundle).resolve())) for _ in range(max(1, int(workers)))]
        self.pool = ActorPool(self.actors)

    def ready(self) -> list[str]:
        """Wait until every actor has loaded the bundle; their bundle ids."""
        return self._ray.get([a.bundle_id.remote() for a in self.actors])

    def score(self, paths: list, batch_size: int = 8) -> Iterator[dict]:
        """Verdict records of ``paths`` in input order; chunks of ``batch_size`` paths are the unit of work
        (decode, preprocess and the session run happen in the actor)."""
        for records in self.pool.map(lambda a, c: a.score.remote(c), chunks([str(p) for p in paths], batch_size)):
            yield from records


class _MapWorker:
    """Actor body: the frozen level-1 feature module, run on chunks of image paths."""

    def __init__(self, config_dict: dict):
        _pin_one_thread()
        import torch

        from ..training.config import config_from_dict
        from ..training.features import lite0_features_for
        from ..training.fit import input_spec_for

        torch.set_num_threads(1)
        self.config = config_from_dict(config_dict)
        m = self.config.model
        self.spec = input_spec_for(self.config)
        self.features = lite0_features_for(m).eval()

    def maps(self, paths: list[str]) -> tuple[np.ndarray | None, list[int], list[str]]:
        """Decode, preprocess and extract ``paths`` -> (maps ``float32 (n_ok, D, h, w)``, indices of the
        paths that decoded, one message per path that did not)."""
        from ..runtime.preprocess import ImageError, load_for_model
        from ..training.features import extract

        arrays, ok, errors = [], [], []
        for i, p in enumerate(paths):
            try:
                arrays.append(load_for_model(Path(p), self.spec))
                ok.append(i)
            except ImageError as exc:
                errors.append(str(exc))
        if not arrays:
            return None, ok, errors
        return extract(self.features, np.stack(arrays), self.config.batch_size), ok, errors


class RayFeatureExtractor:
    """Level-1 maps of image paths computed by ``workers`` one-thread Ray actors (created once, reused
    for every :meth:`maps` call). Call inside :func:`ray_session`.

    Chunks hold a multiple of ``config.batch_size`` images, so (when every image decodes) each forward
    pass sees the same batch as the single-process :func:`~linewatch.training.features.extract` would,
    in the same order: the maps, and the density fitted on them, match the one-process fit. Only the
    frozen ``lite0`` backbone can be extracted this way (``conv_ae`` trains its features on all images first).
    """

    def __init__(self, config, workers: int = 2):
        if config.model.backbone != "lite0":
            raise ValueError(f"the Ray engine extracts frozen backbone features; model.backbone="
                             f"{config.model.backbone!r} trains its features on all images first: use --engine local")
        ray = import_ray()
        from ray.util import ActorPool

        self.config = config
        self.workers = max(1, int(workers))
        actor = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(_MapWorker)
        self.pool = ActorPool([actor.remote(config.to_dict()) for _ in range(self.workers)])

    def maps(self, paths: list[Path], progress: Callable[[str], None] | None = None
             ) -> tuple[np.ndarray, list[Path], list[str]]:
        """(maps ``float32 (N_ok, D, h, w)`` in the order of ``paths``, the paths that decoded, errors)."""
        say = progress or (lambda _m: None)
        bs = self.config.batch_size
        per_chunk = bs * max(1, min(8, len(paths) // (bs * self.workers * 2)))
        parts = chunks([str(p) for p in paths], per_chunk)
        maps, used, errors, done = [], [], [], 0
        for k, (m, ok, errs) in enumerate(self.pool.map(lambda a, c: a.maps.remote(c), parts)):
            if m is not None:
                maps.append(m)
            used.extend(paths[k * per_chunk + i] for i in ok)
            errors.extend(errs)
            done += len(parts[k])
            say(f"features {done}/{len(paths)} images ({self.workers} Ray workers)")
        if not maps:
            from ..training.data import DataError

            raise DataError("none of the images could be read:\n  " + "\n  ".join(errors[:10]))
        return np.concatenate(maps, axis=0), used, errors
