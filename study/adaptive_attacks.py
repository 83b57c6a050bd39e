"""Adaptive attacks on the deployed model: high-confidence PGD, and a radius-aware attack.

The network is rebuilt in torch (float64) from the verifier's own layers (`TorchNet`), so the
attacks differentiate exactly the function radiusguard verifies. `TorchNet.ibp_margins` is a
sound interval (IBP) lower bound of the certified margins at a given eps, differentiable in the
input: the radius-aware attack maximises it at a target eps while keeping a confident
misclassification. Results are cached as ``.npz`` + ``.json`` keyed by model, attack,
parameters and source indices, like study.attacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from verifier.network import (
    INPUT,
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Network,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
)

CACHE_VERSION = 1
ATTACKS = ("pgd", "radius_aware")

Bounds = tuple[torch.Tensor, torch.Tensor]


def _conv(layer: Conv, weight: torch.Tensor, v: torch.Tensor, bias: bool) -> torch.Tensor:
    pt, pl, pb, pr = layer.pads
    img = F.pad(v.reshape(-1, *layer.in_shape), (pl, pr, pt, pb))
    out = F.conv2d(img, weight, torch.as_tensor(layer.bias) if bias else None,
                   stride=layer.stride)
    return out.reshape(len(v), -1)


def _pool(layer: MaxPool, v: torch.Tensor) -> torch.Tensor:
    pt, pl, pb, pr = layer.pads
    img = F.pad(v.reshape(-1, *layer.in_shape), (pl, pr, pt, pb), value=-torch.inf)
    return F.max_pool2d(img, layer.kernel, layer.stride).reshape(len(v), -1)


def _affine_ibp(fn: Callable, abs_fn: Callable, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
    c, r = (lo + hi) / 2, (hi - lo) / 2
    c2, r2 = fn(c), abs_fn(r)
    return c2 - r2, c2 + r2


# Per layer type: (forward, interval transfer). Monotone layers map bounds to bounds.
def _dense(layer: Dense) -> tuple[Callable, Callable]:
    w, b = torch.as_tensor(layer.weight), torch.as_tensor(layer.bias)
    fwd = lambda v: v @ w.T + b  # noqa: E731
    return fwd, lambda lo, hi: _affine_ibp(fwd, lambda r: r @ w.abs().T, lo, hi)


def _convolution(layer: Conv) -> tuple[Callable, Callable]:
    w = torch.as_tensor(layer.weight)
    fwd = lambda v: _conv(layer, w, v, True)  # noqa: E731
    return fwd, lambda lo, hi: _affine_ibp(fwd, lambda r: _conv(layer, w.abs(), r, False), lo, hi)


def _scale(layer: Scale) -> tuple[Callable, Callable]:
    a, b = torch.as_tensor(layer.a), torch.as_tensor(layer.b)
    fwd = lambda v: a * v + b  # noqa: E731
    return fwd, lambda lo, hi: _affine_ibp(fwd, lambda r: a.abs() * r, lo, hi)


def _monotone(fn: Callable) -> tuple[Callable, Callable]:
    return fn, lambda lo, hi: (fn(lo), fn(hi))


LAYERS: dict[type, Callable[[Any], tuple[Callable, Callable]]] = {
    Dense: _dense,
    Conv: _convolution,
    Scale: _scale,
    MaxPool: lambda layer: _monotone(lambda v: _pool(layer, v)),
    Relu: lambda layer: _monotone(torch.relu),
    Sigmoid: lambda layer: _monotone(torch.sigmoid),
    Tanh: lambda layer: _monotone(torch.tanh),
    LeakyRelu: lambda layer: _monotone(lambda v: F.leaky_relu(v, layer.alpha)),
    # joins take every source's value, and their (lo, hi) pairs one after another
    Add: lambda layer: (lambda *vs: sum(vs[1:], vs[0]),
                        lambda *b: (sum(b[2::2], b[0]), sum(b[3::2], b[1]))),
    Concat: lambda layer: (lambda *vs: torch.cat(vs, 1),
                           lambda *b: (torch.cat(b[0::2], 1), torch.cat(b[1::2], 1))),
}


class TorchNet:
    """A verifier Network in torch (float64, flat inputs [B, n]): logits and IBP margins."""

    def __init__(self, net: Network):
        self.net = net
        self.steps = [LAYERS[type(layer)](layer) for layer in net.layers]
        last = net.layers[-1]
        self.last = last if isinstance(last, Dense) else None

    def _walk(self, start: Any, upto: int, step: Callable[[int, list], Any]) -> dict[int, Any]:
        """Every layer's value before layer `upto`, each from its sources' (net.sources_of)."""
        outs = {INPUT: start}
        for i in range(upto):
            outs[i] = step(i, [outs[j] for j in self.net.sources_of(i)])
        return outs

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of flat inputs."""
        n = len(self.steps)
        return self._walk(x, n, lambda i, ins: self.steps[i][0](*ins))[n - 1] if n else x

    def ibp_margins(self, x: torch.Tensor, eps: float, label: torch.Tensor) -> torch.Tensor:
        """Sound lower bounds [B, classes] of z_label - z_j over the clipped eps-ball (IBP; the
        last Dense layer is applied to the differences, which is tighter); +inf at label."""
        lo = (x - eps).clamp(self.net.input_lower, self.net.input_upper)
        hi = (x + eps).clamp(self.net.input_lower, self.net.input_upper)
        n = len(self.steps)
        outs = self._walk((lo, hi), n - 1 if self.last is not None else n,
                          lambda i, ins: self.steps[i][1](*(b for pair in ins for b in pair)))
        lo, hi = outs[self.net.sources_of(n - 1)[0] if self.last is not None else n - 1]
        if self.last is None:
            low = lo.gather(1, label[:, None]) - hi
        else:
            w, b = torch.as_tensor(self.last.weight), torch.as_tensor(self.last.bias)
            dw = w[label][:, None, :] - w[None, :, :]  # [B, classes, hidden]
            db = b[label][:, None] - b[None, :]
            c, r = (lo + hi) / 2, (hi - lo) / 2
            low = (dw * c[:, None, :]).sum(-1) - (dw.abs() * r[:, None, :]).sum(-1) + db
        return low.masked_fill(F.one_hot(label, low.shape[1]).bool(), torch.inf)


def logit_margin(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """z_label - max_{j != label} z_j per row."""
    other = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), -torch.inf)
    return logits.gather(1, label[:, None])[:, 0] - other.max(1).values


def pgd(
    tnet: TorchNet, x: np.ndarray, y: np.ndarray, eps: float, kappa: float, steps: int = 100,
    restarts: int = 3, seed: int = 0, cert_eps: float = 0.0, cert_weight: float = 0.0,
) -> np.ndarray:
    """L-inf PGD on the margin loss clipped at kappa: maximise min(max_{j!=y} z_j - z_y, kappa)
    (a confident misclassification), plus cert_weight x the IBP lower bound of the adversarial
    class's certified margin at cert_eps (the radius-aware attack; clipped at 0 above).

    Restarts start uniformly in the ball; per input the run with the best final objective
    (misclassified first) is kept. Returns float64 [B, n] in [0, 1].
    """
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(np.asarray(x, np.float64).reshape(len(x), -1))
    yt = torch.as_tensor(np.asarray(y, np.int64))
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    best = x0.clone()
    best_key = torch.full((len(x0),), -torch.inf, dtype=torch.float64)
    alpha = 2.5 * eps / steps
    for r in range(restarts):
        delta = (torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2 - 1) * eps
        adv = (x0 + delta if r else x0.clone()).clamp(lo, hi)
        for _ in range(steps):
            adv.requires_grad_(True)
            obj = _objective(tnet, adv, yt, kappa, cert_eps, cert_weight)
            (grad,) = torch.autograd.grad(obj.sum(), adv)
            adv = torch.minimum(torch.maximum(adv.detach() + alpha * grad.sign(), lo), hi)
        with torch.no_grad():
            obj = _objective(tnet, adv, yt, kappa, cert_eps, cert_weight)
            wrong = tnet.logits(adv).argmax(1) != yt
            key = obj + 1e6 * wrong
            better = key > best_key
            best[better], best_key[better] = adv[better], key[better]
    return best.numpy()


def _objective(
    tnet: TorchNet, adv: torch.Tensor, y: torch.Tensor, kappa: float, cert_eps: float,
    cert_weight: float,
) -> torch.Tensor:
    logits = tnet.logits(adv)
    confident = (-logit_margin(logits, y)).clamp(max=kappa)
    if not cert_weight:
        return confident
    masked = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    target = masked.argmax(1)
    cert = tnet.ibp_margins(adv, cert_eps, target)
    cert = cert.masked_fill(torch.isinf(cert), torch.inf).min(1).values
    return confident + cert_weight * cert.clamp(max=0.0)


@dataclass(frozen=True)
class AdaptiveResult:
    """Successful adversarial examples (misclassified by the float64 network) of one attack.

    x: float64 [k, n]; source: index into the caller's inputs; label: true labels.
    """

    name: str
    x: np.ndarray
    source: np.ndarray
    label: np.ndarray
    tried: int
    seconds: float
    params: Mapping[str, Any]


def run_adaptive(
    net: Network, name: str, params: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
    indices: Sequence[int], cache_dir: str | Path | None = None,
) -> AdaptiveResult:
    """Attack x[indices] (floats in [0, 1]) with PGD `params` (pgd's keyword arguments);
    cached. Kept: inputs the network classified correctly and the attack turned wrong."""
    indices = [int(i) for i in indices]
    params = dict(sorted(params.items()))
    key = hashlib.sha256(json.dumps({
        "v": CACHE_VERSION, "model": net.sha256, "attack": name, "params": params,
        "indices": indices,
    }, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{name.replace('.', '_')}-{key[:20]}" if cache_dir else None
    if path is not None and path.with_suffix(".json").is_file():
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("key") == key:
            with np.load(path.with_suffix(".npz")) as z:
                return AdaptiveResult(name, z["x"], z["source"], z["label"], meta["tried"],
                                      meta["seconds"], params)
    xs = np.asarray(x, np.float64).reshape(len(x), -1)[indices]
    ys = np.asarray(y, np.int64).reshape(-1)[indices]
    t0 = time.perf_counter()
    adv = pgd(TorchNet(net), xs, ys, **params)
    seconds = time.perf_counter() - t0
    clean = np.argmax(net.forward(xs), 1) if len(xs) else ys
    ok = (clean == ys) & (np.argmax(net.forward(adv), 1) != ys) if len(xs) else ys.astype(bool)
    result = AdaptiveResult(name, adv[ok], np.asarray(indices)[ok], ys[ok], len(indices),
                            seconds, params)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, x=result.x, source=result.source, label=result.label)
        os.replace(tmp, path.with_suffix(".npz"))
        path.with_suffix(".json").write_text(json.dumps({
            "key": key, "model_sha256": net.sha256, "attack": name, "params": params,
            "indices": indices, "tried": len(indices), "succeeded": int(ok.sum()),
            "seconds": round(seconds, 3),
        }, indent=1) + "\n")
    return result
