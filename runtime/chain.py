"""Running the bundle's top-layer CAE chain with onnxruntime alone (no torch).

One step maps a state ``(N, D_state)`` and standard-normal noise ``(N, D_code)`` to the next state
(``h = f(x); h' = h + J J^T (sigma * noise); x' = g(h')``, sigma baked into the graph). Used for
on-device adaptation and augmentation: the recorded states are new plausible level-``state_level``
codes of good patches.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .bundle import Bundle, BundleError


class ChainRunner:
    """Load ``chain_step.onnx`` and the start states of a bundle.

    Attributes: ``start_`` ``float32 (S, D_state)`` start states shipped in the bundle; ``spec`` the
    manifest's ``chain`` section.
    """

    def __init__(self, bundle: Bundle, threads: int = 0):
        self.spec = bundle.manifest.chain
        if not self.spec:
            raise BundleError(f"{bundle.path}: this bundle has no chain graph (it was trained without stack.widths); "
                              "retrain with stack.widths (e.g. configs/augment.yaml)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(bundle.file(self.spec["file"])), opts,
                                            providers=["CPUExecutionProvider"])
        self.start_ = np.load(bundle.file(self.spec["start_file"]), allow_pickle=False).astype(np.float32)

    def step(self, state: np.ndarray, noise: np.ndarray) -> np.ndarray:
        s = self.spec
        return self.session.run([s["output"]], {s["state_input"]: state, s["noise_input"]: noise})[0]

    def run(self, n_samples: int, n_chains: int = 64, burn_in: int | None = None, thin: int | None = None,
            seed: int = 0, start: np.ndarray | None = None) -> np.ndarray:
        """Chains from ``start`` (default: random shipped start states) -> ``float32 (n_samples, D_state)``,
        recorded every ``thin`` steps after ``burn_in`` (defaults from the manifest), in step-major order."""
        rng = np.random.default_rng(seed)
        burn_in = self.spec["burn_in"] if burn_in is None else burn_in
        thin = self.spec["thin"] if thin is None else thin
        if start is None:
            start = self.start_[rng.choice(self.start_.shape[0], n_chains, replace=self.start_.shape[0] < n_chains)]
        state = np.ascontiguousarray(start, dtype=np.float32)
        out, t = [], 0
        while sum(len(o) for o in out) < n_samples:
            noise = rng.standard_normal((state.shape[0], self.spec["noise_dim"])).astype(np.float32)
            state = self.step(state, noise)
            t += 1
            if t > burn_in and (t - burn_in) % thin == 0:
                out.append(state)
        return np.concatenate(out)[:n_samples]
