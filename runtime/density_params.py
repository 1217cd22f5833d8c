"""The Parzen density's parameters, kept in a file of their own so the edge can change the bank.

The scoring graph computes, for a patch feature ``z`` ``(d,)`` in the density's space and bank
centres ``mu_i`` with weights ``w_i`` (summing to 1) and kernel std ``s``, ``c = 1 / (2 s^2)``::

    a_i = z . kernel[:, i] + bias[i],   kernel = 2 c mu^T  (d, M),   bias = log w - c |mu|^2  (M,)

(``linewatch.training.parzen``). Those two tensors are ONNX *external data*: ``model.onnx`` names
them and records their shapes, and their bytes live in the bundle's ``density.bin`` (kernel then
bias, float32 little-endian, at the offsets the manifest's ``density["parameters"]`` gives).
onnxruntime reads them when it loads the model. Rewriting ``density.bin`` with another bank of the
*same size* ``M`` (``linewatch adapt``) therefore changes the density without touching the graph,
and needs neither torch nor the ``onnx`` package. The bandwidth ``s`` and the normalising constant
stay baked in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DENSITY_FILE = "density.bin"
KERNEL_NAME, BIAS_NAME = "density.kernel", "density.bias"


@dataclass
class DensityParams:
    """``kernel`` ``float32 (d, M)``, ``bias`` ``float32 (M,)`` and ``c = 1 / (2 s^2)`` (per squared feature unit)."""

    kernel: np.ndarray
    bias: np.ndarray
    c: float

    @property
    def bank(self) -> np.ndarray:
        """Kernel centres ``float32 (M, d)``."""
        return np.ascontiguousarray((self.kernel / (2.0 * self.c)).T, dtype=np.float32)

    @property
    def log_weights(self) -> np.ndarray:
        """``float64 (M,)`` log-weights (their exponentials sum to 1 up to rounding)."""
        bank = self.bank.astype(np.float64)
        return self.bias.astype(np.float64) + self.c * np.sum(bank * bank, axis=1)

    @classmethod
    def from_bank(cls, bank: np.ndarray, weights: np.ndarray, c: float) -> "DensityParams":
        """Centres ``(M, d)`` and non-negative weights ``(M,)`` (normalised here) -> parameters."""
        bank = np.asarray(bank, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        if bank.ndim != 2 or w.shape != (bank.shape[0],) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError(f"a bank (M, d) and M non-negative weights are needed, got {bank.shape} and {w.shape}")
        with np.errstate(divide="ignore"):
            logw = np.log(w / w.sum())
        bias = np.maximum(logw, -1e30) - c * np.sum(bank * bank, axis=1)
        return cls(kernel=np.ascontiguousarray((2.0 * c * bank).T, dtype=np.float32),
                   bias=bias.astype(np.float32), c=float(c))

    def to_bytes(self) -> bytes:
        """The ``density.bin`` contents: kernel then bias, float32 little-endian."""
        return (np.ascontiguousarray(self.kernel, dtype="<f4").tobytes()
                + np.ascontiguousarray(self.bias, dtype="<f4").tobytes())

    def layout(self) -> dict[str, Any]:
        """The manifest's ``density["parameters"]`` entry for :meth:`to_bytes`."""
        k = int(self.kernel.nbytes)
        return {"file": DENSITY_FILE, "c": float(self.c), "format": "float32 little-endian, ONNX external data",
                "tensors": {"kernel": {"name": KERNEL_NAME, "offset": 0, "length": k,
                                       "shape": [int(s) for s in self.kernel.shape]},
                            "bias": {"name": BIAS_NAME, "offset": k, "length": int(self.bias.nbytes),
                                     "shape": [int(s) for s in self.bias.shape]}}}


def read_density_params(data: bytes, layout: dict[str, Any], where: str = DENSITY_FILE) -> DensityParams:
    """Parse ``density.bin`` bytes with its manifest ``layout`` (see :meth:`DensityParams.layout`).

    Raises ``ValueError`` naming ``where`` when the sizes disagree.
    """
    out = {}
    for key in ("kernel", "bias"):
        t = layout["tensors"][key]
        shape, off, n = tuple(t["shape"]), int(t["offset"]), int(t["length"])
        if n != 4 * int(np.prod(shape)) or off + n > len(data):
            raise ValueError(f"{where}: {key} of shape {list(shape)} at bytes {off}..{off + n} does not fit the "
                             f"file's {len(data)} bytes; the bundle is damaged, copy it again")
        out[key] = np.frombuffer(data, dtype="<f4", count=n // 4, offset=off).reshape(shape).astype(np.float32)
    return DensityParams(kernel=out["kernel"], bias=out["bias"], c=float(layout["c"]))
