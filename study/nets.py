"""Network architectures of the study (MNIST FNNs and CNNs, LeNet-5 for CIFAR-10) and their
naming scheme.

Names look like ``fnn-3x30-relu``, ``fnn-50-20-tanh``, ``cnn-6-16-128-relu`` or
``lenet5-relu``; the parser is torch-free so the naming can be used without the ``study``
extra.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

Activation = Literal["relu", "sigmoid", "tanh"]
ACTIVATIONS: tuple[str, ...] = ("relu", "sigmoid", "tanh")
KINDS: tuple[str, ...] = ("fnn", "cnn", "lenet5", "eran")

_FNN_RE = re.compile(r"^fnn-(?:(?P<n>\d+)x(?P<w>\d+)|(?P<list>\d+(?:-\d+)*))-(?P<act>[a-z]+)$")
_CNN_RE = re.compile(r"^cnn-(?P<c1>\d+)-(?P<c2>\d+)-(?P<fc>\d+)-(?P<act>[a-z]+)$")
_LENET_RE = re.compile(r"^lenet5-(?P<act>[a-z]+)$")
# ERAN's ConvSmall/ConvMed/ConvBig for 3x32x32 (study.refnets), ReLU only.
_ERAN_RE = re.compile(r"^(?P<arch>convsmall|convmed|convbig)-(?P<act>relu)$")
_ERAN_SIZES = {"convsmall": (16, 32, 100), "convmed": (16, 32, 1000),
               "convbig": (32, 32, 64, 64, 512, 512)}


@dataclass(frozen=True)
class NetSpec:
    """Architecture description: FNN ``sizes`` are hidden widths, CNN ``sizes`` are (c1, c2, fc),
    LeNet-5 ``sizes`` are (6, 16, 120, 84)."""

    name: str
    kind: str
    sizes: tuple[int, ...]
    activation: str
    seed: int = 0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input: MNIST for FNNs and CNNs, CIFAR-10 for LeNet-5 and ERAN's."""
        return (3, 32, 32) if self.kind in ("lenet5", "eran") else (1, 28, 28)

    def build(self) -> nn.Module:
        """Instantiate the (untrained) torch module; weights depend on the torch RNG state."""
        if self.kind == "fnn":
            return fnn(list(self.sizes), self.activation)
        if self.kind == "lenet5":
            return lenet5(self.activation)
        if self.kind == "eran":
            from study.refnets import NETS

            return NETS[self.name.split("-")[0]]()
        c1, c2, fc = self.sizes
        return cnn(c1, c2, fc, self.activation)


def parse_net_name(name: str, seed: int = 0) -> NetSpec:
    """Parse ``fnn-<L>x<W>-<act>``, ``fnn-<w1>-...-<wk>-<act>``, ``cnn-<c1>-<c2>-<fc>-<act>``,
    ``lenet5-<act>`` or ``convsmall-relu`` / ``convmed-relu`` / ``convbig-relu``."""
    text = name.strip().lower()
    if m := _FNN_RE.match(text):
        if m["list"] is not None:
            sizes = tuple(int(s) for s in m["list"].split("-"))
        else:
            sizes = (int(m["w"]),) * int(m["n"])
        kind = "fnn"
    elif m := _CNN_RE.match(text):
        sizes = (int(m["c1"]), int(m["c2"]), int(m["fc"]))
        kind = "cnn"
    elif m := _LENET_RE.match(text):
        sizes = (6, 16, 120, 84)
        kind = "lenet5"
    elif m := _ERAN_RE.match(text):
        sizes = _ERAN_SIZES[m["arch"]]
        kind = "eran"
    else:
        raise ValueError(
            f"bad network name {name!r}; expected e.g. fnn-3x30-relu, fnn-50-20-tanh, "
            "cnn-6-16-128-relu, lenet5-relu, convsmall-relu"
        )
    act = m["act"]
    if act not in ACTIVATIONS:
        raise ValueError(f"bad activation {act!r} in {name!r}; expected one of {ACTIVATIONS}")
    if not sizes or min(sizes) < 1:
        raise ValueError(f"layer sizes must be positive in {name!r}")
    return NetSpec(name=text, kind=kind, sizes=sizes, activation=act, seed=seed)


def _act(activation: str) -> nn.Module:
    from torch import nn

    layers = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if activation not in layers:
        raise ValueError(f"bad activation {activation!r}; expected one of {ACTIVATIONS}")
    return layers[activation]()


def fnn(hidden: list[int], activation: Activation) -> nn.Sequential:
    """Fully connected net: Flatten, then Linear+activation per hidden width, then 10 logits."""
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), _act(activation)]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def cnn(c1: int, c2: int, fc: int, activation: Activation) -> nn.Sequential:
    """LeNet-like CNN: two (3x3 conv, act, 2x2 max-pool) blocks, one hidden FC, 10 logits.

    No padding, stride 1: spatial size 28 -> 26 -> 13 -> 11 -> 5.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, c1, 3),
        _act(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3),
        _act(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 5 * 5, fc),
        _act(activation),
        nn.Linear(fc, 10),
    )


def lenet5(activation: Activation) -> nn.Sequential:
    """LeNet-5 for 32x32 RGB (the paper's CNN-CIFAR): (5x5 conv, act, 2x2 max-pool) with 6 and
    16 filters, then 120 and 84 hidden units and 10 logits; 32 -> 28 -> 14 -> 10 -> 5."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 6, 5),
        _act(activation),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        _act(activation),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        _act(activation),
        nn.Linear(120, 84),
        _act(activation),
        nn.Linear(84, 10),
    )
