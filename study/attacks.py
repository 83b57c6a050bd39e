"""Adversarial examples for the study: ART attacks run on the deployed ONNX model itself.

The ONNX file is converted with onnx2torch and wrapped in an ART PyTorchClassifier (inputs
[N,1,28,28] in [0,1]); success is judged by our float64 `Network.forward`, so every kept
example is adversarial for the network that radiusguard verifies. Results are cached as
``.npz`` + ``.json`` keyed by model sha256, attack, parameters and the source indices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from verifier.network import Network

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier
    from torch import nn

log = logging.getLogger(__name__)

ATTACK_KINDS = ("fgsm", "cw", "hop")
CACHE_VERSION = 2

# Parameters of each ART attack kind: ART's defaults, except C&W's batches of 64 (ART: 1; the
# per-example search is the same, only vectorised) and HopSkipJump's fixed seed.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.1, "norm": "inf", "batch_size": 64},
    "cw": {
        "confidence": 0.0, "learning_rate": 0.01, "binary_search_steps": 10, "max_iter": 10,
        "initial_const": 0.01, "max_halving": 5, "max_doubling": 5, "batch_size": 64,
    },
    "hop": {
        "norm": 2, "max_iter": 50, "max_eval": 10000, "init_eval": 100, "init_size": 100,
        "batch_size": 64, "seed": 0,
    },
}
# The study's four attack categories (the paper's), as kind plus overrides.
DEFAULT_ATTACKS: dict[str, dict[str, Any]] = {
    "fgsm_0.1": {"kind": "fgsm", "eps": 0.1},
    "fgsm_0.05": {"kind": "fgsm", "eps": 0.05},
    "cw": {"kind": "cw"},
    "hop": {"kind": "hop"},
}


@dataclass(frozen=True)
class AttackSpec:
    """One attack category: its name (e.g. ``fgsm_0.1``), ART attack kind and parameters."""

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ValueError(f"attack {self.name!r}: kind must be one of {ATTACK_KINDS}")

    def describe(self) -> dict[str, Any]:
        """Plain data naming the attack and every parameter (defaults filled in)."""
        return {"kind": self.kind, **_full_params(self.kind, self.params)}


@dataclass(frozen=True)
class AttackResult:
    """Successful adversarial examples of one attack on one set of source inputs.

    x: float32 [k, *input_shape]; source: index of each example's source input (into the
    caller's array); label: its true label; tried: how many sources were attacked.
    """

    x: np.ndarray
    source: np.ndarray
    label: np.ndarray
    tried: int
    seconds: float
    params: Mapping[str, Any]


def attack_spec(name: str, params: Mapping[str, Any] | None = None) -> AttackSpec:
    """An AttackSpec from a category name and optional overrides (kind from the defaults)."""
    base = dict(DEFAULT_ATTACKS.get(name, {}))
    base.update(params or {})
    kind = base.pop("kind", None)
    if kind is None:
        raise ValueError(f"attack {name!r} has no 'kind' (one of {ATTACK_KINDS})")
    return AttackSpec(name, str(kind), base)


def _full_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(KIND_DEFAULTS[kind])
    if unknown:
        raise ValueError(f"unknown {kind} parameters {sorted(unknown)}")
    return dict(sorted({**KIND_DEFAULTS[kind], **dict(params)}.items()))


def torch_module(onnx_path: str | Path) -> nn.Module:
    """The ONNX model as a torch module (onnx2torch), in eval mode, float32."""
    import onnx
    import torch
    from onnx2torch import convert

    class _Float32(torch.nn.Module):
        """Casts inputs to float32 (ART's HopSkipJump proposes float64 samples)."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """The wrapped model on float32 inputs."""
            return self.inner(x.float())

    return _Float32(convert(onnx.load(str(onnx_path))).float()).eval()


def art_classifier(
    onnx_path: str | Path, input_shape: tuple[int, ...], n_classes: int
) -> PyTorchClassifier:
    """ART PyTorchClassifier around the converted ONNX model, inputs clipped to [0, 1]."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    module = torch_module(onnx_path)
    return PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


class LazyClassifier:
    """Builds the ART classifier on first use, so a run served from the cache never loads it."""

    def __init__(self, onnx_path: str | Path, input_shape: tuple[int, ...], n_classes: int):
        self._args = (onnx_path, tuple(input_shape), n_classes)
        self._classifier = None

    def get(self) -> PyTorchClassifier:
        """The classifier (built once)."""
        if self._classifier is None:
            self._classifier = art_classifier(*self._args)
        return self._classifier


def cache_key(model_sha256: str, spec: AttackSpec, indices: Sequence[int]) -> str:
    """SHA-256 over the model, the attack with all its parameters, and the source indices."""
    payload = {
        "v": CACHE_VERSION,
        "model": model_sha256,
        "attack": spec.name,
        "params": spec.describe(),
        "indices": [int(i) for i in indices],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _make_attack(spec: AttackSpec, classifier):
    from art.attacks.evasion import CarliniL2Method, FastGradientMethod, HopSkipJump

    p = _full_params(spec.kind, spec.params)
    if spec.kind == "fgsm":
        norm = np.inf if str(p["norm"]) == "inf" else p["norm"]
        return FastGradientMethod(
            classifier, norm=norm, eps=float(p["eps"]), batch_size=int(p["batch_size"])
        )
    if spec.kind == "cw":
        return CarliniL2Method(
            classifier,
            confidence=float(p["confidence"]),
            learning_rate=float(p["learning_rate"]),
            binary_search_steps=int(p["binary_search_steps"]),
            max_iter=int(p["max_iter"]),
            initial_const=float(p["initial_const"]),
            max_halving=int(p["max_halving"]),
            max_doubling=int(p["max_doubling"]),
            batch_size=int(p["batch_size"]),
            verbose=False,
        )
    return HopSkipJump(
        classifier,
        batch_size=int(p["batch_size"]),
        norm=np.inf if str(p["norm"]) == "inf" else int(p["norm"]),
        max_iter=int(p["max_iter"]),
        max_eval=int(p["max_eval"]),
        init_eval=int(p["init_eval"]),
        init_size=int(p["init_size"]),
        verbose=False,
    )


def generate(
    net: Network,
    onnx_path: str | Path,
    spec: AttackSpec,
    x: np.ndarray,
    y: np.ndarray,
    classifier=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the attack on float inputs x [k, ...] with labels y; returns (x_adv float32, ok).

    ok[i] is True iff our Network classifies x[i] correctly and x_adv[i] wrongly.
    """
    import torch

    x = np.asarray(x, dtype=np.float32).reshape((-1, *net.input_shape))
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if classifier is None:
        classifier = art_classifier(onnx_path, net.input_shape, net.n_outputs)
    elif isinstance(classifier, LazyClassifier):
        classifier = classifier.get()
    p = _full_params(spec.kind, spec.params)
    if "seed" in p:
        # HopSkipJump draws from numpy's global generator: seed it for this chunk only.
        state = np.random.get_state()
        np.random.seed(int(p["seed"]))
        torch.manual_seed(int(p["seed"]))
    try:
        attack = _make_attack(spec, classifier)
        y_onehot = np.eye(net.n_outputs, dtype=np.float32)[y]
        extra = {}
        if spec.kind == "hop" and len(x):
            extra["x_adv_init"] = hop_start(classifier, x, int(p["seed"]), int(p["init_size"]))
        adv = attack.generate(x=x, y=y_onehot, **extra) if len(x) else x.copy()
    finally:
        if "seed" in p:
            np.random.set_state(state)
    adv = np.clip(np.asarray(adv, dtype=np.float32), 0.0, 1.0)
    clean_pred = _predict(net, x)
    adv_pred = _predict(net, adv)
    ok = (clean_pred == y) & (adv_pred != y)
    return adv, ok


def hop_start(classifier, x: np.ndarray, seed: int, init_size: int) -> np.ndarray:
    """Seeded HopSkipJump starting points (ART draws its own from an unseeded generator).

    Per input, as ART does: the first of `init_size` uniform random images that the classifier
    labels differently from the input, pulled towards the input by bisection on the blend
    weight down to 0.001. Inputs without such an image keep themselves (ART then draws).
    """
    start = x.copy()
    pred = np.argmax(classifier.predict(x), axis=1)
    for i in range(len(x)):
        rng = np.random.default_rng([seed, i])
        cands = rng.uniform(0.0, 1.0, size=(init_size, *x.shape[1:])).astype(np.float32)
        hits = np.flatnonzero(np.argmax(classifier.predict(cands), axis=1) != pred[i])
        if not hits.size:
            continue
        far = cands[hits[0]]
        lo, hi = 0.0, 1.0  # weight of the random image in the blend; hi stays adversarial
        while hi - lo > 0.001:
            mid = (lo + hi) / 2
            blend = ((1 - mid) * x[i] + mid * far)[None].astype(np.float32)
            if np.argmax(classifier.predict(blend), axis=1)[0] != pred[i]:
                hi = mid
            else:
                lo = mid
        start[i] = (1 - hi) * x[i] + hi * far
    return start


def _predict(net: Network, x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    logits = net.forward(np.asarray(x, dtype=np.float64).reshape(len(x), -1))
    return np.argmax(np.atleast_2d(logits), axis=1)


def run_attack(
    net: Network,
    onnx_path: str | Path,
    spec: AttackSpec,
    x: np.ndarray,
    y: np.ndarray,
    indices: Sequence[int],
    cache_dir: str | Path | None = None,
    classifier=None,
) -> AttackResult:
    """Attack the inputs x[indices] (cached); keep the successful examples only.

    x holds floats in [0, 1] (or uint8 pixels, scaled by 1/255); `source` in the result
    refers to positions in x, so the cache key's indices identify the inputs when x is a
    fixed data set.
    """
    indices = [int(i) for i in indices]
    params = spec.describe()
    path = None
    if cache_dir is not None:
        key = cache_key(net.sha256, spec, indices)
        path = Path(cache_dir) / f"{spec.name.replace('.', '_')}-{key[:20]}"
        cached = _load_cached(path, key)
        if cached is not None:
            return cached
    xs = _as_float(x)[indices]
    ys = np.asarray(y, dtype=np.int64).reshape(-1)[indices]
    t0 = time.perf_counter()
    adv, ok = generate(net, onnx_path, spec, xs, ys, classifier)
    seconds = time.perf_counter() - t0
    result = AttackResult(
        x=adv[ok],
        source=np.asarray(indices, dtype=np.int64)[ok],
        label=ys[ok],
        tried=len(indices),
        seconds=seconds,
        params=params,
    )
    if path is not None:
        _save_cached(path, key, net.sha256, spec, indices, result)
    log.info("%s on %s: %d/%d successful in %.1fs", spec.name, net.name, int(ok.sum()),
             len(indices), seconds)
    return result


def _as_float(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.float32)


def _load_cached(path: Path, key: str) -> AttackResult | None:
    meta_path, npz_path = _files(path)
    if not (meta_path.is_file() and npz_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        with np.load(npz_path, allow_pickle=False) as z:
            return AttackResult(
                x=z["x"], source=z["source"], label=z["label"], tried=int(meta["tried"]),
                seconds=float(meta["seconds"]), params=meta["params"],
            )
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable attack cache %s: %s", path, exc)
        return None


def _save_cached(
    path: Path, key: str, model: str, spec: AttackSpec, indices: list[int], result: AttackResult
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, x=result.x, source=result.source, label=result.label)
    meta_path, npz_path = _files(path)
    os.replace(tmp, npz_path)
    meta = {
        "key": key, "model_sha256": model, "attack": spec.name, "params": result.params,
        "indices": indices, "tried": result.tried, "succeeded": int(len(result.source)),
        "seconds": round(result.seconds, 3),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")


def _files(path: Path) -> tuple[Path, Path]:
    """The JSON and NPZ files of a cache entry (the stem may contain dots)."""
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".npz")
