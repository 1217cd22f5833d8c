"""Move the density's two initialisers out of ``model.onnx`` into ``density.bin`` (ONNX external data).

See :mod:`linewatch.runtime.density_params` for why and for the file's layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

from ..runtime.density_params import BIAS_NAME, DENSITY_FILE, KERNEL_NAME, DensityParams


def externalize_density(onnx_path: str | Path, c: float) -> tuple[Path, dict[str, Any]]:
    """Rewrite ``onnx_path`` so ``density.kernel`` / ``density.bias`` are read from ``density.bin`` beside it.

    ``c = 1 / (2 s^2)`` of the density (recorded for the runtime). Returns the ``density.bin`` path and
    the manifest's ``density["parameters"]`` entry. Raises ``ValueError`` when the graph lacks either
    initialiser (a graph not made by linewatch's exporter).
    """
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    missing = [n for n in (KERNEL_NAME, BIAS_NAME) if n not in inits]
    if missing:
        raise ValueError(f"{onnx_path}: no initialiser named {missing}; the density head was not exported by linewatch")
    params = DensityParams(kernel=numpy_helper.to_array(inits[KERNEL_NAME]).astype(np.float32),
                           bias=numpy_helper.to_array(inits[BIAS_NAME]).astype(np.float32), c=float(c))
    layout = params.layout()
    bin_path = onnx_path.with_name(DENSITY_FILE)
    bin_path.write_bytes(params.to_bytes())
    for key, name in (("kernel", KERNEL_NAME), ("bias", BIAS_NAME)):
        t, spec = inits[name], layout["tensors"][key]
        t.CopyFrom(numpy_helper.from_array(getattr(params, key), name))    # raw_data form, which set_external_data needs
        set_external_data(t, DENSITY_FILE, offset=spec["offset"], length=spec["length"])
        t.data_location = onnx.TensorProto.EXTERNAL
        t.ClearField("raw_data")
    onnx.save(model, str(onnx_path))
    return bin_path, layout
