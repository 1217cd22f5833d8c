"""New good images from top-layer chain samples, decoded to pixels (``linewatch augment``); no torch.

A bundle trained with ``configs/augment.yaml`` ships three things this module runs with onnxruntime:

* ``chain_step.onnx``: one step of the top CAE's chain on *states* ``(N, D_state)`` at the level below
  the top (level 1 = rows standardised by the stack, ``state = (row - state_mean) / state_std``; level
  2 = first-CAE codes, ...), see :mod:`linewatch.runtime.chain`;
* ``augment_start.npz``: the full state maps ``(S, P, D_state)`` of ``S`` training images (``P = h * w``
  patches, row-major), the CAE decoder weights that take a state back down to level 1, the
  standardisation ``state_mean``/``state_std`` ``(D,)`` and each map's index in the training set;
* ``decoder.onnx``: level-1 rows ``(N, P, D)`` -> image ``(N, C, H, W)`` in [0, 1] (manifest ``decoder``).

A sample starts from a random shipped map; all ``P`` patch states of the map run the chain jointly (one
batch, independent noise per patch) for ``steps`` steps; the map is mapped back to level-1 rows and
decoded. (With states above level 1 even ``steps = 0`` passes through the CAE decoders, so the start
maps are compared after the same mapping.) Its *nearest training image* is the shipped start map with the smallest patch-aligned RMS
distance in level-1 row space, ``sqrt(mean_p ||x_p - t_p||^2)`` (feature space, not pixels): the number
of distinct nearest images over the samples measures how far the chains mix away from their starts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import onnxruntime as ort

from .bundle import Bundle, BundleError
from .chain import ChainRunner

RETRAIN = "retrain with `linewatch train --config configs/augment.yaml` (a stack, its chain and the pixel decoder)"
NEAREST_SPACE = ("level-1 feature space: patch-aligned RMS distance sqrt(mean over patches of ||x_p - t_p||^2) "
                 "to the shipped training start maps (whitened level-1 rows)")


@dataclass
class AugmentSamples:
    """``images`` ``uint8 (N, H, W, C)`` (bundle colour order); ``start`` / ``nearest`` ``int (N,)`` indices
    into the shipped start maps; ``nearest_training_image`` ``int (N,)`` the nearest map's index in the
    training set; ``distance`` ``float (N,)`` RMS level-1 distance to it."""

    images: np.ndarray
    start: np.ndarray
    nearest: np.ndarray
    nearest_training_image: np.ndarray
    distance: np.ndarray


def nearest_maps(rows: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each map ``rows`` ``(N, P, D)``, the reference map ``(S, P, D)`` with the smallest patch-aligned
    RMS distance: indices ``int (N,)`` and distances ``float64 (N,)``."""
    a = rows.reshape(rows.shape[0], -1).astype(np.float64)
    b = reference.reshape(reference.shape[0], -1).astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    idx = np.argmin(d2, axis=1)
    return idx, np.sqrt(np.maximum(d2[np.arange(len(idx)), idx], 0.0) / rows.shape[1])


class Augmenter:
    """Run a bundle's chain on shipped training maps and decode the results to pixels.

    Raises :class:`BundleError` naming what to do when the bundle has no chain, no decoder or no start maps.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, threads: int = 0):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        m = self.bundle.manifest
        where = self.bundle.path
        if not m.decoder:
            raise BundleError(f"{where}: this bundle has no pixel decoder (decoder.onnx); {RETRAIN}")
        if not m.chain:
            raise BundleError(f"{where}: this bundle has no chain graph (no stack.widths); {RETRAIN}")
        if "augment" not in m.decoder:
            raise BundleError(f"{where}: no augment start maps were shipped (the chain runs below the density, "
                              f"not on the top CAE); {RETRAIN}")
        self.spec = m.decoder
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.chain = ChainRunner(self.bundle, threads)
        self.session = ort.InferenceSession(str(self.bundle.file(self.spec["file"])), opts,
                                            providers=["CPUExecutionProvider"])
        with np.load(self.bundle.file(self.spec["augment"]["start_file"]), allow_pickle=False) as z:
            self.start_maps_ = z["maps"].astype(np.float32)            # (S, P, D) states
            self.state_mean_ = z["state_mean"].astype(np.float32)      # (D,)
            self.state_std_ = z["state_std"].astype(np.float32)        # (D,)
            self.start_images_ = z["image_index"].astype(np.int64)     # (S,)
            self.down_ = [(z[f"down_W_{k}"], z[f"down_c_{k}"], z[f"down_b_{k}"])
                          for k in range(self.spec["augment"]["n_down_layers"])]
        self.start_rows_ = self.to_rows(self.start_maps_)

    def to_rows(self, states: np.ndarray) -> np.ndarray:
        """Chain states ``(..., D_state)`` -> level-1 rows ``(..., D)`` (the decoder's input space): down
        through the CAE decoders below the chain's level (sigmoid, the last one linear), then un-standardised."""
        h = np.asarray(states, dtype=np.float32)
        for k, (W, c, _b) in enumerate(self.down_):
            a = h @ W + c
            h = a if k == len(self.down_) - 1 else 1.0 / (1.0 + np.exp(-a))
        return (h * self.state_std_ + self.state_mean_).astype(np.float32)

    def to_states(self, rows: np.ndarray) -> np.ndarray:
        """Level-1 rows ``(..., D)`` -> chain states ``(..., D_state)``: standardised, then up through the CAE
        encoders below the chain's level (``sigmoid(h W^T + b)``). ``to_rows(to_states(rows))`` projects rows
        the way every sample is projected (the identity for level-1 states)."""
        h = (np.asarray(rows, dtype=np.float32) - self.state_mean_) / self.state_std_
        for W, _c, b in reversed(self.down_):
            h = 1.0 / (1.0 + np.exp(-(h @ W.T + b)))
        return h.astype(np.float32)

    def decode(self, rows: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Level-1 rows ``(N, P, D)`` -> ``float32 (N, C, H, W)`` in [0, 1]."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        s = self.spec
        return np.concatenate([self.session.run([s["output"]], {s["input"]: rows[i:i + batch_size]})[0]
                               for i in range(0, rows.shape[0], batch_size)])

    def run_chain(self, states: np.ndarray, steps: int, rng: np.random.Generator) -> np.ndarray:
        """``steps`` chain steps on every patch of the maps ``(N, P, D)`` jointly -> states ``(N, P, D)``."""
        n, p, d = states.shape
        x = np.ascontiguousarray(states.reshape(n * p, d), dtype=np.float32)
        for _ in range(steps):
            x = self.chain.step(x, rng.standard_normal((x.shape[0], self.chain.spec["noise_dim"])).astype(np.float32))
        return x.reshape(n, p, d)

    def sample(self, count: int, steps: int = 20, seed: int = 0, batch_maps: int = 32,
               start: np.ndarray | None = None) -> AugmentSamples:
        """``count`` new images after ``steps`` chain steps from random shipped training maps (or from the
        shipped maps ``start`` ``int (count,)``)."""
        if count < 1 or steps < 0:
            raise ValueError(f"need count >= 1 and steps >= 0, got count={count}, steps={steps}")
        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, self.start_maps_.shape[0], size=count)
        start = drawn if start is None else np.asarray(start, dtype=np.int64)
        images, nearest, dist = [], [], []
        for i in range(0, count, batch_maps):
            rows = self.to_rows(self.run_chain(self.start_maps_[start[i:i + batch_maps]], steps, rng))
            k, d = nearest_maps(rows, self.start_rows_)
            nearest.append(k), dist.append(d)
            images.append(to_uint8(self.decode(rows)))
        near = np.concatenate(nearest)
        return AugmentSamples(np.concatenate(images), start, near, self.start_images_[near], np.concatenate(dist))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``float (N, C, H, W)`` in [0, 1] -> ``uint8 (N, H, W, C)``."""
    return np.clip(np.rint(images.transpose(0, 2, 3, 1) * 255.0), 0, 255).astype(np.uint8)


def contact_sheet(images: np.ndarray, columns: int | None = None, pad: int = 2, background: int = 255) -> np.ndarray:
    """A grid of ``uint8 (N, H, W, C)`` images, ``pad`` pixels apart -> ``uint8 (rows*(H+pad)+pad, ..., C)``;
    ``columns`` defaults to ``ceil(sqrt(N))``."""
    n, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), background, dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    return sheet


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``uint8 (H, W, C)`` in RGB (or grey, C = 1) order as a PNG; raises ``OSError`` on failure."""
    bgr = image[..., 0] if image.shape[-1] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"{path}: could not write the PNG (is the folder writable?)")


def run_augment(bundle: str | os.PathLike, count: int, out: str | os.PathLike, steps: int = 20, seed: int = 0,
                threads: int = 0, progress: Callable[[str], None] | None = None) -> dict:
    """``linewatch augment``: write ``count`` PNGs ``OUT/augment_0000.png ...`` and ``OUT/contact_sheet.png``.
    Returns the JSON summary (files, nearest training images, ``distinct_nearest_training_images``)."""
    say = progress or (lambda _m: None)
    aug = Augmenter(bundle, threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"augment: {count} samples, {steps} chain steps from {aug.start_maps_.shape[0]} shipped training maps")
    s = aug.sample(count, steps, seed)
    files = []
    for i, im in enumerate(s.images):
        files.append(str(out / f"augment_{i:04d}.png"))
        write_png(files[-1], im)
    sheet = out / "contact_sheet.png"
    write_png(sheet, contact_sheet(s.images))
    distinct = int(len(np.unique(s.nearest_training_image)))
    say(f"augment: wrote {count} images and {sheet}; they are nearest to {distinct} distinct training images "
        f"(of {aug.start_maps_.shape[0]} shipped, {int(np.sum(s.nearest != s.start))} moved nearer another image "
        f"than their start), mean distance {float(s.distance.mean()):.3g}")
    return {"bundle": str(aug.bundle.path), "bundle_id": aug.bundle.id, "count": int(count), "steps": int(steps),
            "seed": int(seed), "out": str(out), "contact_sheet": str(sheet), "files": files,
            "n_start_maps": int(aug.start_maps_.shape[0]),
            "distinct_nearest_training_images": distinct,
            "moved_to_another_image": int(np.sum(s.nearest != s.start)),
            "nearest_training_image": [int(v) for v in s.nearest_training_image],
            "start_training_image": [int(v) for v in aug.start_images_[s.start]],
            "mean_distance_to_nearest": float(s.distance.mean()), "nearest_space": NEAREST_SPACE}
