"""Self-configuration: ``train`` chooses the scoring configuration per product from good images alone.

No single configuration wins on every product: fine stride-8 patches find thin scratches and print
errors that pooled stride-16 patches blur away, deeper features see larger shapes, whitening helps on
stochastic textures and magnifies benign shifts elsewhere, a top-k image score is steadier than the
maximum on textures and weaker for one small defect. So ``train`` measures the candidates on the product
itself by a **proxy validation**:

1. A quarter of the training images (whole groups, as cross-fitting keeps them) is held out.
2. The held-out images (at most :data:`MAX_HELD_OUT`) get synthetic defects (``training/proxy_defects.py``:
   cut-paste, blended blobs, thin lines, colour spots, tints), and benign-shifted copies (brightness, blur,
   up to 2 px, JPEG) that count as good: a configuration that flags a brighter lamp is as wrong as one that
   misses a stain.
3. Each candidate's density is fitted on the other images, and its proxy AUROC is the image AUROC of
   the defective copies against the held-out good images and their benign copies.

The backbone runs once: every candidate's features are built from the same Lite0 taps
(stride 8, and stride 16 after blocks 7 and 10) by :func:`combine_taps`, exactly as the exported graph
builds them. The search is staged, so that it costs a handful of density fits rather than the product
of every option: features (strides, pooling, depth) at the configured whitening and image score, then the
whitening strength, then the position code, then the image score and then the global branch (these two
re-aggregate cached patch scores, no refit). Each stage starts from the previous stage's choice (the first
from the configured settings) and keeps it unless another option beats it by :data:`MIN_GAIN` (the proxy
is an estimate; a switch must be worth it).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ..runtime.density import image_scores
from ..runtime.preprocess import InputSpec
from .backbones.lite0 import TAP_STRIDE8, load_lite0
from .bank import fit_parzen
from .config import TrainConfig
from .features import combine_taps, to_patches
from .folds import assign_folds
from .global_branch import Fusion, GlobalGaussian, descriptors
from .position import with_position
from .metrics import auroc
from .parzen import log_density
from .proxy_defects import KINDS, proxy_images, to_display, to_model_inputs
from .whitening import fit_whitening

Progress = Callable[[str], None]

MIN_GAIN = 0.02           # proxy AUROC an option must add over the stage's incumbent to replace it (about one
                          # standard error of the proxy AUROC with 40 held-out images: a switch must be clear)
HELD_OUT_SHARE = 4        # 1 in HELD_OUT_SHARE groups is held out (one fold of four)
MAX_HELD_OUT = 40         # held-out images given proxy defects (bounds the cost on large sets)
DEFECTS_PER_IMAGE = 4     # proxy defects drawn on each held-out image
MIN_IMAGES = 12           # below this the proxy says nothing: the defaults are kept
TAPS = (TAP_STRIDE8, 7, 10)   # stride 8 (40 ch), stride 16 after block 7 (80 ch) and after block 10 (112 ch)


@dataclass(frozen=True)
class Candidate:
    """One scoring configuration: which Lite0 taps and pooling, whitening, position code, image score and
    whether the global branch is on. The shipped starting point is :data:`DEFAULT`, not the field defaults."""

    name: str
    feature_strides: tuple[int, ...] = (16,)
    patch_pool: int = 3
    lite0_blocks: int = 8
    whiten: bool = True
    whiten_shrinkage: float = 0.05
    top_k: int = 20
    global_branch: bool = False
    position_weight: float = 0.0

    def taps(self) -> tuple[int, ...]:
        return tuple(TAP_STRIDE8 if s == 8 else self.lite0_blocks - 1 for s in sorted(self.feature_strides))

    def applied_to(self, config: TrainConfig) -> TrainConfig:
        """A copy of ``config`` with this candidate's settings (and self-configuration off: it is resolved)."""
        out = copy.deepcopy(config)
        out.model.feature_strides = list(self.feature_strides)
        out.model.patch_pool, out.model.lite0_blocks = self.patch_pool, self.lite0_blocks
        out.density.whiten, out.density.whiten_shrinkage = self.whiten, self.whiten_shrinkage
        out.scoring.top_k, out.scoring.global_branch = self.top_k, self.global_branch
        out.scoring.position_weight = self.position_weight
        out.autoconfig.enabled = False
        return out

    def with_(self, name: str, **changes) -> "Candidate":
        return Candidate(**{**asdict(self), **changes, "name": name})


DEFAULT = Candidate("stride 16, pool 3, 8 blocks, whitened 0.3, top-20 mean", whiten_shrinkage=0.3)
FEATURE_OPTIONS = (
    DEFAULT,
    DEFAULT.with_("strides 8+16, pool 3", feature_strides=(8, 16)),
    DEFAULT.with_("stride 8, pool 3", feature_strides=(8,)),
    DEFAULT.with_("stride 16, pool 3, 11 blocks", lite0_blocks=11),
    DEFAULT.with_("stride 16, pool 1", patch_pool=1),
    DEFAULT.with_("strides 8+16, pool 1", feature_strides=(8, 16), patch_pool=1),
)
WHITEN_OPTIONS = ((True, 0.3), (True, 0.05), (False, 0.0))
TOP_K_OPTIONS = (20, 5, 1)
POSITION_OPTIONS = (0.0, 4.0, 12.0)   # training/position.py: 12 keeps a patch's matches within about 2 cells


def candidate_from_config(config: TrainConfig, name: str = "configured") -> Candidate:
    """The candidate ``config`` describes (where the staged search starts)."""
    m, d = config.model, config.density
    return Candidate(name, tuple(sorted(m.feature_strides)), m.patch_pool, m.lite0_blocks, d.whiten,
                     d.whiten_shrinkage, config.scoring.top_k, config.scoring.global_branch,
                     config.scoring.position_weight)


@torch.no_grad()
def lite0_taps(images: np.ndarray, batch_size: int, progress: Progress) -> dict[int, torch.Tensor]:
    """The Lite0 tap maps of :data:`TAPS` for model inputs ``(N, 3, H, W)``: ``{block: (N, C, h, w)}``."""
    net = load_lite0(truncate_after=max(TAPS))
    outs: dict[int, list[torch.Tensor]] = {t: [] for t in TAPS}
    for i in range(0, images.shape[0], batch_size):
        for t, m in zip(TAPS, net.features(torch.from_numpy(images[i:i + batch_size]), TAPS)):
            outs[t].append(m)
        done = min(i + batch_size, images.shape[0])
        if done == images.shape[0] or i % (8 * batch_size) == 0:
            progress(f"self-configuration features {done}/{images.shape[0]} images")
    return {t: torch.cat(v) for t, v in outs.items()}


def maps_for(taps: dict[int, torch.Tensor], cand: Candidate, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
    """Level-1 maps ``float32 (N, D, h, w)`` of ``cand``'s features for the images ``rows`` of ``taps``."""
    return combine_taps([taps[t][rows] for t in cand.taps()], cand.patch_pool).numpy()


@dataclass
class ProxySet:
    """Which tap rows are what: fitting images, held-out good, their benign copies and defective copies."""

    fit: np.ndarray
    good: np.ndarray
    benign: np.ndarray
    defect: np.ndarray
    defect_kinds: list[str]
    fit_copies: np.ndarray          # benign copies of the fitting images, in the banks as training puts them


def held_out_split(groups: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out) of the training images; whole groups are held out (one fold of four)."""
    fold = assign_folds(groups, HELD_OUT_SHARE, seed)
    held = np.flatnonzero(fold == 0)
    return np.flatnonzero(fold != 0), held[np.random.default_rng(seed).permutation(len(held))[:MAX_HELD_OUT]]


def proxy_inputs(images: np.ndarray, held: np.ndarray, mean, std, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Model inputs of the held-out images' benign copies ``(H, C, H, W)`` and defective copies
    ``(H * DEFECTS_PER_IMAGE, C, H, W)`` (normalised like ``images``), and the defect kinds."""
    disp = to_display(images[held], mean, std)                                # (H, h, w, C) in [0, 1]
    defects, benign, kinds = proxy_images(disp, disp, DEFECTS_PER_IMAGE, seed)
    return to_model_inputs(benign, mean, std), to_model_inputs(defects, mean, std), kinds


def proxy_scores(taps: dict[int, torch.Tensor], cand: Candidate, proxy: ProxySet, config: TrainConfig
                 ) -> dict[str, np.ndarray]:
    """Fit ``cand``'s density on ``proxy.fit`` and score the other sets: patch scores ``(n, h*w)`` per set."""
    maps = maps_for(taps, cand)
    patches = to_patches(maps)                                        # (N, P, D)
    dim = patches.shape[-1]
    fitting = np.concatenate([proxy.fit, proxy.fit_copies])
    if cand.whiten:
        w = fit_whitening(patches[fitting].reshape(-1, dim), cand.whiten_shrinkage, seed=config.seed)
        patches = w.transform(patches)
    gaussian = GlobalGaussian().fit(descriptors(patches[fitting]))
    plain = patches
    if cand.position_weight:
        patches = with_position(patches, maps.shape[2], maps.shape[3], cand.position_weight)
        dim += 2
    density = fit_parzen(patches[fitting].reshape(-1, dim), patches[proxy.good].reshape(-1, dim), config, config.seed)
    out = {}
    for name in ("good", "benign", "defect"):
        rows = patches[getattr(proxy, name)]
        out[name] = -log_density(density, rows.reshape(-1, dim)).reshape(rows.shape[0], -1)
        out[f"{name}_global"] = gaussian.score_samples(descriptors(plain[getattr(proxy, name)]))
    return out


def proxy_figures(scores: dict[str, np.ndarray], top_k: int, global_branch: bool) -> dict[str, float]:
    """Proxy AUROC (defects vs good + benign copies), and against good alone and benign alone; with
    ``global_branch`` the image scores include the global statistics, fused as in training."""
    s = {k: image_scores(scores[k], top_k) for k in ("good", "benign", "defect")}
    if global_branch:
        fusion = Fusion.from_good(scores["good_global"], s["good"])
        s = {k: v + fusion.added(scores[f"{k}_global"]) for k, v in s.items()}
    neg = np.concatenate([s["good"], s["benign"]])
    both = lambda a, b: auroc(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])  # noqa: E731
    return {"proxy_auroc": round(both(neg, s["defect"]), 4), "auroc_vs_good": round(both(s["good"], s["defect"]), 4),
            "benign_vs_good_auroc": round(both(s["good"], s["benign"]), 4)}


def _stage(options: list[Candidate], evaluate: Callable[[Candidate], dict], stage: str, table: list[dict],
           say: Progress) -> Candidate:
    """Evaluate ``options`` (the incumbent first); keep it unless another beats it by :data:`MIN_GAIN`."""
    results = []
    for cand in options:
        fig = evaluate(cand)
        table.append({"stage": stage, "candidate": cand.name, **asdict(cand), **fig})
        results.append((fig["proxy_auroc"], cand))
        say(f"self-configuration [{stage}] {cand.name}: proxy AUROC {fig['proxy_auroc']:.3f} "
            f"(vs good {fig['auroc_vs_good']:.3f}; benign copies vs good {fig['benign_vs_good_auroc']:.3f})")
    incumbent = results[0]
    best = max(results, key=lambda r: r[0])
    return best[1] if best[0] >= incumbent[0] + MIN_GAIN else incumbent[1]


def _skipped(reason: str, say: Progress) -> dict:
    say(f"self-configuration skipped: {reason}; the configured settings are used")
    return {"method": "none", "skipped": reason}


def select_configuration(images: np.ndarray, groups: list[str], config: TrainConfig, spec: InputSpec,
                         benign: np.ndarray | None = None, progress: Progress | None = None
                         ) -> tuple[TrainConfig, dict, np.ndarray | None, np.ndarray | None]:
    """Choose the scoring configuration for good images ``float32 (N, C, H, W)`` (model inputs) by proxy
    validation (module docstring). Returns the resolved configuration (``autoconfig.enabled`` off), the
    record for the manifest (every candidate, its proxy figures, the choice) and the chosen features' level-1
    maps ``float32 (N, D, h, w)`` of ``images`` and ``(N * k, D, h, w)`` of their ``benign`` copies
    (``(N * k, C, H, W)`` model inputs, as training adds them to the bank; ``None`` = none). The maps are
    ``None`` when the selection was skipped: extract them. ``spec``: the model input's normalisation (to draw
    defects on pixel values). With benign copies, the held-out images' copies are the proxy's benign set and
    the fitting images' copies join the candidates' banks, as in training."""
    say = progress or (lambda _m: None)
    if config.model.backbone != "lite0":
        return config, _skipped("only the lite0 backbone has candidates", say), None, None
    if config.stack.widths or config.decoder.enabled or config.sampling.chain_samples:
        return config, _skipped("the stack, chain and pixel decoder are fitted for the configured features",
                                say), None, None
    if images.shape[0] < MIN_IMAGES or len(set(groups)) < 2:
        return config, _skipped(f"{images.shape[0]} images in {len(set(groups))} groups; the proxy needs at least "
                                f"{MIN_IMAGES} images in 2 or more groups", say), None, None
    t0 = time.perf_counter()
    fit, held = held_out_split(groups, config.seed)
    own_copies, defects, kinds = proxy_inputs(images, held, spec.mean, spec.std, config.seed)
    n, k = images.shape[0], 0 if benign is None else benign.shape[0] // images.shape[0]
    copies = own_copies if benign is None else benign
    nb = copies.shape[0]
    say(f"self-configuration: {len(held)} held-out images (+ benign copies, {len(kinds)} proxy defects), "
        f"densities fitted on {len(fit)}" + (f" and {k} benign copies of each" if k else ""))
    taps = lite0_taps(np.concatenate([images, copies, defects]), config.batch_size, say)
    if k:   # the held-out images' first copies are the benign set; the fitting images' copies join the banks
        benign_rows, fit_copies = n + held * k, n + (fit[:, None] * k + np.arange(k)).ravel()
    else:
        benign_rows, fit_copies = n + np.arange(nb), np.zeros(0, np.int64)
    proxy = ProxySet(fit, held, benign_rows, n + nb + np.arange(len(kinds)), kinds, fit_copies)
    cache: dict[tuple, dict] = {}

    def evaluate(cand: Candidate) -> dict:
        key = (cand.feature_strides, cand.patch_pool, cand.lite0_blocks, cand.whiten, cand.whiten_shrinkage,
               cand.position_weight)
        if key not in cache:
            cache[key] = proxy_scores(taps, cand, proxy, config)
        return proxy_figures(cache[key], cand.top_k, cand.global_branch)

    table: list[dict] = []
    best = _search(candidate_from_config(config), evaluate, table, say)
    resolved = best.applied_to(config)
    record = {"method": "proxy validation: synthetic defects (" + ", ".join(KINDS) + ") and benign "
                        "shifts on held-out training images; the candidate with the highest proxy AUROC",
              "fit_images": int(len(fit)), "held_out_images": int(len(held)), "benign_copies": int(nb),
              "proxy_defects": {k: kinds.count(k) for k in sorted(set(kinds))}, "min_gain": MIN_GAIN,
              "candidates": table, "chosen": best.name,
              "chosen_settings": {k: v for k, v in asdict(best).items() if k != "name"},
              "seconds": round(time.perf_counter() - t0, 1)}
    say(f"self-configuration chose: {best.name} ({record['seconds']} s)")
    return resolved, record, maps_for(taps, best, slice(0, n)), maps_for(taps, best, slice(n, n + nb)) if k else None


def _search(start: Candidate, evaluate: Callable[[Candidate], dict], table: list[dict], say: Progress) -> Candidate:
    """The staged search from ``start`` (the configured settings): features, whitening, position code,
    image score, global branch (module docstring); every candidate's figures are appended to ``table``."""
    features = [start.with_(f"configured: {_describe(start)}")] + [
        o.with_(o.name, whiten=start.whiten, whiten_shrinkage=start.whiten_shrinkage, top_k=start.top_k,
                position_weight=start.position_weight, global_branch=start.global_branch)
        for o in FEATURE_OPTIONS if (o.feature_strides, o.patch_pool, o.lite0_blocks)
        != (start.feature_strides, start.patch_pool, start.lite0_blocks)]
    best = _stage(features, evaluate, "features", table, say)
    whitening = [best] + [best.with_(f"{_features(best)}, " + (f"whitened {s:g}" if w else "not whitened"),
                                     whiten=w, whiten_shrinkage=s)
                          for w, s in WHITEN_OPTIONS if (w, s) != (best.whiten, best.whiten_shrinkage)]
    best = _stage(whitening, evaluate, "whitening", table, say)
    positions = [best] + [best.with_(f"{_features(best)}, {_whitening(best)}, " + _position(p), position_weight=p)
                          for p in POSITION_OPTIONS if p != best.position_weight]
    best = _stage(positions, evaluate, "position", table, say)
    scores = [best] + [best.with_(f"{_features(best)}, {_whitening(best)}, " + ("max" if k == 1 else f"top-{k} mean"),
                                  top_k=k) for k in TOP_K_OPTIONS if k != best.top_k]
    best = _stage(scores, evaluate, "image score", table, say)
    other = best.with_(f"{_describe(best)}, " + ("no global branch" if best.global_branch else "global branch"),
                       global_branch=not best.global_branch)
    best = _stage([best, other], evaluate, "global branch", table, say)
    return best.with_(_describe(best))


def _features(c: Candidate) -> str:
    strides = "+".join(str(s) for s in c.feature_strides)
    return f"stride{'s' if len(c.feature_strides) > 1 else ''} {strides}, pool {c.patch_pool}, {c.lite0_blocks} blocks"


def _whitening(c: Candidate) -> str:
    return f"whitened {c.whiten_shrinkage:g}" if c.whiten else "not whitened"


def _position(weight: float) -> str:
    return f"position weight {weight:g}" if weight else "no position"


def _describe(c: Candidate) -> str:
    return (f"{_features(c)}, {_whitening(c)}, " + (f"{_position(c.position_weight)}, " if c.position_weight else "")
            + ("max" if c.top_k == 1 else f"top-{c.top_k} mean") + (", global branch" if c.global_branch else ""))
