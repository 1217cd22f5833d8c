"""The chain's encoder and decoder as two small graphs, so the edge can start chains from new codes.

``chain_step.onnx`` maps a chain state (level ``l - 1``) to the next one. On-device adaptation
(:mod:`linewatch.runtime.adapt`) starts chains from the *density-level* codes of new images and must
bring the recorded states back to the density's level, so the bundle of a chain also carries:

* ``chain_decode.onnx``: ``code (N, D_code)`` -> ``state (N, D_state)``, the top layer's decoder ``g``;
* ``chain_encode.onnx``: ``state (N, D_state)`` -> ``code (N, D_code)``, the top layer's encoder ``f``
  (the same map the scoring graph applies last, so the codes are in the density's space).

Both use the weights of the :class:`~linewatch.training.sampler.ChainStep` being exported.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..training.sampler import ChainStep
from .onnx_export import ParityError

CODEC_STATE, CODEC_CODE = "state", "code"
ENCODE_FILE, DECODE_FILE = "chain_encode.onnx", "chain_decode.onnx"


class _Encode(nn.Module):
    def __init__(self, step: ChainStep):
        super().__init__()
        self.register_buffer("W", step.W.clone())
        self.register_buffer("b", step.b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ self.W.t() + self.b)


class _Decode(nn.Module):
    def __init__(self, step: ChainStep):
        super().__init__()
        self.register_buffer("W", step.W.clone())
        self.register_buffer("c", step.c.clone())
        self.sigmoid = step.sigmoid_decoder

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = h @ self.W + self.c
        return torch.sigmoid(a) if self.sigmoid else a


def _export(module: nn.Module, in_name: str, out_name: str, dim: int, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(2, dim),), str(path), dynamo=False, opset_version=opset,
                          input_names=[in_name], output_names=[out_name],
                          dynamic_axes={in_name: {0: "n"}, out_name: {0: "n"}})


@torch.no_grad()
def export_chain_codec(step: ChainStep, start: np.ndarray, folder: Path, opset: int = 17,
                       atol: float = 1e-4) -> tuple[dict[str, Path], dict]:
    """Write ``chain_encode.onnx`` and ``chain_decode.onnx`` into ``folder``; check both against torch on
    ``start`` states ``(S, D_state)``. Returns the files and the manifest's ``chain`` entries."""
    state_dim, code_dim = int(step.W.shape[1]), int(step.W.shape[0])
    enc, dec = _Encode(step), _Decode(step)
    enc_path, dec_path = folder / ENCODE_FILE, folder / DECODE_FILE
    _export(enc, CODEC_STATE, CODEC_CODE, state_dim, enc_path, opset)
    _export(dec, CODEC_CODE, CODEC_STATE, code_dim, dec_path, opset)
    x = np.ascontiguousarray(start[:64], dtype=np.float32)
    h = enc(torch.from_numpy(x)).numpy()
    diff = 0.0
    for path, name, inp, want in ((enc_path, CODEC_STATE, x, h), (dec_path, CODEC_CODE, h, dec(torch.from_numpy(h)).numpy())):
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: inp})[0]
        diff = max(diff, float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))))
    if diff > atol:
        raise ParityError(f"the chain encode/decode graphs differ from torch by {diff:.3g} (> {atol}); "
                          "the bundle was not written")
    return ({ENCODE_FILE: enc_path, DECODE_FILE: dec_path},
            {"encode_file": ENCODE_FILE, "decode_file": DECODE_FILE, "codec_parity_max_abs_diff": diff})
