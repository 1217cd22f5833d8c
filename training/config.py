"""Training configuration: plain dataclasses read from YAML (no class-path magic).

Unknown keys are errors (a typo must not silently fall back to a default). See ``configs/default.yaml``
for every option with its meaning.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    backbone: str = "lite0"          # "lite0" (ImageNet EfficientNet-Lite0) or "conv_ae" (trained from scratch)
    image_size: int = 224            # model input height = width, pixels
    channels: int = 3                # 3 (RGB) or 1 (grey; conv_ae only)
    feature_strides: list[int] = field(default_factory=lambda: [16])   # lite0: 8 and/or 16; conv_ae: 2 and/or 4
    patch_pool: int = 3              # average features over pool x pool neighbouring patches (1 = off)
    lite0_blocks: int = 8            # lite0 blocks run (6..11); the last one is the stride-16 tap (8: 80 ch)


@dataclass
class ConvAEConfig:
    """The small convolutional autoencoder option for tiny (grey) images."""

    width: int = 32                  # channels of the first encoder stage (second stage: 2x)
    epochs: int = 40
    learning_rate: float = 1e-3
    batch_size: int = 32


@dataclass
class DensityConfig:
    bank_size: int = 1024            # patch features kept in the Parzen bank (greedy coreset)
    max_candidates: int = 30000      # random patches the coreset is chosen from
    coreset_projection: int = 32     # random-projection dims used only to pick the coreset
    weighted: bool = True            # weight each bank point by the patches it stands for
    whiten: bool = True              # sphere the level-1 features with their training covariance first
    whiten_shrinkage: float = 0.3    # covariance shrinkage towards the identity (training/whitening.py)
    benign_copies: int = 1           # benign-shifted copies of each training image added to the bank (0 = none)
    level: int = 1                   # representation level of the density: 1 = features, 2.. = stack codes
    folds: int = 5                   # cross-fitting folds for bandwidth choice and calibration scores
    bandwidth_patches: int = 20000   # held-out patches (over all folds) that choose the bandwidth
    bandwidth_factors: list[float] = field(
        default_factory=lambda: [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0])
    # candidate bandwidths = factor x median distance of held-out patches to their nearest bank point


@dataclass
class StackConfig:
    """Contractive autoencoders stacked on the standardised level-1 features (levels 2, 3, ...)."""

    widths: list[int] = field(default_factory=list)   # code width of each level above 1; [] = level 1 only
    epochs: int = 15
    learning_rate: float = 1e-3
    batch_size: int = 256
    contraction: float = 0.1         # weight of the Jacobian penalty ||df/dx||_F^2
    max_patches: int = 50000         # training patches the stack is fitted on


@dataclass
class SamplingConfig:
    """Top-layer CAE chains whose samples join the density bank (only with density.level >= 2)."""

    chain_samples: int = 0           # samples added to each bank; 0 = none
    n_chains: int = 256
    sigma: float = 0.5               # std of the hidden-space noise, in code units
    burn_in: int = 10
    thin: int = 2


@dataclass
class DecoderConfig:
    """A conv decoder from level-1 patch-feature maps back to pixels (``training/pixel_decoder.py``).

    Used by ``linewatch augment`` (chain states -> images) and to show what a patch map "looks like".
    """

    enabled: bool = False            # train and ship decoder.onnx
    width: int = 8                   # channels of the last conv stage, at half resolution (earlier: 2x, 4x, ... up to 8x)
    epochs: int = 60
    learning_rate: float = 2e-3
    batch_size: int = 8
    input_noise: float = 0.1         # std of Gaussian noise added to the input features while training (feature units)
    start_images: int = 16           # training images whose full state maps ship as augment start points


@dataclass
class ScoringConfig:
    top_k: int = 20                  # image score = mean of the top_k largest patch scores (bench/results/ablation.md)
    global_branch: bool = False      # add the patches' image-level statistics to the score (training/global_branch.py)
    position_weight: float = 0.0     # append weight x each patch's map coordinates to its row (training/position.py)


@dataclass
class AutoConfigConfig:
    """Self-configuration (``training/autoconfig.py``): choose features, whitening, position code, image score
    and global branch per product by proxy validation on held-out training images. The configured values are
    where the search starts and what it keeps unless another candidate is clearly better."""

    enabled: bool = True


@dataclass
class CalibrationConfig:
    target_false_alarm_rate: float = 0.01   # fraction of good images allowed to be flagged


@dataclass
class ExportConfig:
    opset: int = 17
    parity_images: int = 16                 # held-out images scored by torch and onnxruntime
    parity_rtol: float = 1e-4               # |torch - onnx| <= rtol * max(1, |score|) ...
    parity_atol: float = 1e-3               # ... + atol, for every image score
    int8: bool = False                      # int8 bundle: static QDQ quantisation (late backbone layers) + accuracy gate
    int8_calibration_images: int = 32       # training images that calibrate the int8 activation ranges
    gallery_images: int = 64                # thumbnails of training images in the bundle for `linewatch audit` (0 = none)
    gallery_max_bytes: int = 300_000        # the gallery file's size budget in bytes


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    conv_ae: ConvAEConfig = field(default_factory=ConvAEConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    autoconfig: AutoConfigConfig = field(default_factory=AutoConfigConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0
    batch_size: int = 16             # images per forward pass during feature extraction
    threads: int = 0                 # torch threads; 0 = all cores

    def validate(self) -> "TrainConfig":
        m = self.model
        if m.backbone not in ("lite0", "conv_ae"):
            raise ConfigError(f"model.backbone must be 'lite0' or 'conv_ae', got {m.backbone!r}")
        if m.channels not in (1, 3):
            raise ConfigError(f"model.channels must be 1 or 3, got {m.channels}")
        if m.backbone == "lite0" and m.channels != 3:
            raise ConfigError("model.backbone 'lite0' needs model.channels: 3 (grey images are replicated)")
        if not 16 <= m.image_size <= 1024 or m.image_size % 16:
            raise ConfigError(f"model.image_size must be a multiple of 16 in [16, 1024], got {m.image_size}")
        allowed = {"lite0": {8, 16}, "conv_ae": {2, 4}}[m.backbone]
        if not m.feature_strides or not set(m.feature_strides) <= allowed:
            raise ConfigError(f"model.feature_strides for {m.backbone} must be a non-empty subset of {sorted(allowed)}")
        if m.backbone == "lite0" and not 6 <= m.lite0_blocks <= 11:
            raise ConfigError(f"model.lite0_blocks must be in 6..11 (the stride-16 blocks), got {m.lite0_blocks}")
        if m.patch_pool < 1 or m.patch_pool % 2 == 0:
            raise ConfigError("model.patch_pool must be an odd number >= 1")
        if not 1 <= self.density.level <= len(self.stack.widths) + 1:
            raise ConfigError(f"density.level must be in 1..{len(self.stack.widths) + 1} "
                              f"(stack.widths has {len(self.stack.widths)} levels above 1)")
        if self.sampling.chain_samples and self.density.level < 2:
            raise ConfigError("sampling.chain_samples needs density.level >= 2 (chains run in the stack)")
        dec = self.decoder
        if dec.width < 4 or dec.epochs < 1 or dec.batch_size < 1 or dec.learning_rate <= 0 or dec.input_noise < 0:
            raise ConfigError("decoder: width must be >= 4, epochs and batch_size >= 1, learning_rate > 0, "
                              "input_noise >= 0")
        if dec.start_images < 1:
            raise ConfigError("decoder.start_images must be at least 1")
        if self.scoring.position_weight < 0:
            raise ConfigError(f"scoring.position_weight must be >= 0 (0 = off), got {self.scoring.position_weight}")
        if self.scoring.position_weight and (self.sampling.chain_samples or self.decoder.enabled):
            raise ConfigError("scoring.position_weight cannot be combined with sampling.chain_samples or "
                              "decoder.enabled (their samples and inputs have no position); set it to 0")
        if self.scoring.top_k < 1:
            raise ConfigError("scoring.top_k must be at least 1")
        if not 0 < self.calibration.target_false_alarm_rate < 0.5:
            raise ConfigError("calibration.target_false_alarm_rate must be in (0, 0.5)")
        if not 0 <= self.density.benign_copies <= 8:
            raise ConfigError(f"density.benign_copies must be in 0..8, got {self.density.benign_copies}")
        if self.density.folds < 2:
            raise ConfigError("density.folds must be at least 2")
        if self.density.bank_size < 16:
            raise ConfigError("density.bank_size must be at least 16")
        if self.export.int8_calibration_images < 1:
            raise ConfigError("export.int8_calibration_images must be at least 1")
        if self.export.gallery_images < 0 or self.export.gallery_max_bytes < 0:
            raise ConfigError("export.gallery_images and export.gallery_max_bytes must be >= 0 (0 = no gallery)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _checked(value, f.default if sub is None else sub(), f"{where}.{name}")
    return cls(**kwargs)


def _checked(value: Any, default: Any, where: str) -> Any:
    """``value`` if it has the kind of the option's default (bool, int, float (an int is fine), str, list)."""
    kinds = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list"}
    kind = type(default)
    ok = isinstance(value, bool) if kind is bool else \
        isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
        isinstance(value, kind) and not isinstance(value, bool) if kind in (int, list, str) else True
    if not ok:
        raise ConfigError(f"{where} must be {kinds.get(kind, kind.__name__)}, got {value!r}")
    if kind is list and default and not all(isinstance(v, type(default[0])) or
                                            (isinstance(default[0], float) and isinstance(v, int))
                                            for v in value):
        raise ConfigError(f"{where} must be a list in which each item is {kinds[type(default[0])]}, got {value!r}")
    return value


def config_from_dict(data: dict[str, Any] | None, where: str = "config") -> TrainConfig:
    return _build(TrainConfig, data or {}, where).validate()


# Keys whose default changed: a configuration stored before the key existed (a checkpoint's, a bundle's
# lineage) was trained with the value on the right, not with today's default.
_BEFORE_THE_KEY = {("model", "lite0_blocks"): 11, ("autoconfig", "enabled"): False,
                  ("density", "benign_copies"): 0}


def config_from_stored(data: dict[str, Any], where: str) -> TrainConfig:
    """A configuration stored with a model (checkpoint, ``lineage.config``): as :func:`config_from_dict`,
    but a key it lacks because it predates the key takes the value the model was trained with."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (section, key), value in _BEFORE_THE_KEY.items():
        data.setdefault(section, {}).setdefault(key, value)
    return config_from_dict(data, where)


def load_config(path: str | Path | None) -> TrainConfig:
    """Read a YAML file into a validated :class:`TrainConfig`; ``None`` gives the defaults."""
    if path is None:
        return TrainConfig().validate()
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    return config_from_dict(data, where=str(p))
