"""The study pipeline: per network, six input categories, certified radii, exact radii, report.

For every network of a TOML config (see ``study/configs/quick.toml``) it selects the first N
and a random N (fixed seed) inputs of each category -- valid, misclassified and one per attack
-- computes their certified radii (and exact MILP radii for piecewise-linear FNNs when
``verifier.exact`` is available), and writes ``results.json`` plus the report of
``study.report``. Attacks, predictions and radii are cached under ``<out>/cache``, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from study.attacks import DEFAULT_ATTACKS, AttackSpec, LazyClassifier, attack_spec, run_attack
from study.data import REPO_ROOT
from verifier.network import Conv, MaxPool, Network, Sigmoid, Tanh
from verifier.onnx.importer import load_onnx
from verifier.score import plan_for, score_many
from verifier.settings import VERIFIER_VERSION, VerifierSettings

log = logging.getLogger(__name__)

NATURAL = ("valid", "misclassified")
SELECTIONS = ("first", "random")
RESULTS_VERSION = 1
STANDIN = "mnist-colour"  # MNIST padded to 3x32x32: colour networks without CIFAR-10
STANDIN_TRAIN = 12000  # training images of the stand-in (its float copy is 147 MB)


class ConfigError(ValueError):
    """The study configuration is malformed or names something that does not exist."""


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class NetworkConfig:
    """One network of the study: an ONNX file, or a name study.train can build and train."""

    name: str
    onnx: Path | None = None
    dataset: str = "MNIST"
    train_epochs: int | None = None
    train_seed: int = 0
    train_arch: str | None = None
    exact: bool | None = None
    n: int | None = None
    valid_n: int | None = None
    selections: tuple[str, ...] | None = None
    detail: bool = True

    def arch(self) -> str:
        """The architecture name study.nets parses (the network's name unless given)."""
        return self.train_arch or self.name


@dataclass(frozen=True)
class Algorithm2Config:
    """Section 6's experiment: window s, sigma0/sigma1, stream composition, shuffles."""

    s: int = 50
    sigma0: float = 0.014
    sigma1: float = 0.001
    n_valid: int = 100
    n_adversarial: int = 100
    shuffles: int = 10
    calibrated: bool = True
    max_false_alarm: float = 0.03


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run needs; paths are resolved already."""

    networks: tuple[NetworkConfig, ...]
    attacks: tuple[AttackSpec, ...]
    n: int = 100
    seed: int = 0
    data: str = "mnist"
    domain: str = "deepzono"
    compare_domains: tuple[str, ...] = ()  # radii of the first-N sets under these domains too
    up: float = 0.256
    tol: float = 0.001
    search: str = "secant"
    jobs: int = 2
    torch_threads: int = 2
    exact: bool = True
    exact_n: int = 30
    exact_time_limit: float = 60.0
    exact_categories: tuple[str, ...] = ()
    max_attack_sources: int = 20
    valid_n: int | None = None
    selections: tuple[str, ...] = SELECTIONS
    algorithm2: Algorithm2Config = field(default_factory=Algorithm2Config)
    source: str = ""

    @property
    def settings(self) -> VerifierSettings:
        """How radii are computed in this study."""
        return VerifierSettings(domain=self.domain, search=self.search, up=self.up, tol=self.tol)

    @property
    def categories(self) -> tuple[str, ...]:
        """valid, misclassified, then the attacks in config order."""
        return NATURAL + tuple(a.name for a in self.attacks)

    def n_of(self, net: NetworkConfig) -> int:
        """Inputs per category and selection for `net` (its own n, else the study's)."""
        return net.n or self.n

    def valid_n_of(self, net: NetworkConfig) -> int:
        """Valid inputs per selection for `net` (the p-value uses the first of them)."""
        return max(net.valid_n or self.valid_n or 0, self.n_of(net))

    def selections_of(self, net: NetworkConfig) -> tuple[str, ...]:
        """The selections (first, random) studied on `net`."""
        return net.selections or self.selections


def resolve_path(text: str, base: Path | None = None) -> Path:
    """A path as given if absolute or existing, else under `base`, else under the repo root."""
    p = Path(text).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    for root in (base, REPO_ROOT):
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return p


def load_config(path: str | Path, n: int | None = None, data: str | None = None) -> StudyConfig:
    """Parse a study TOML file; `n` overrides its number of inputs per category and selection,
    `data` its test data (relative paths are taken from the working directory)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if data is not None:
        raw = {**raw, "study": {**raw.get("study", {}), "data": data}}
    return config_from_dict(raw, base=path.parent, n=n, source=str(path))


def config_from_dict(
    raw: Mapping[str, Any], base: Path | None = None, n: int | None = None, source: str = ""
) -> StudyConfig:
    """Build a StudyConfig from parsed TOML data (see the shipped configs for the layout)."""
    study = dict(raw.get("study", {}))
    known = set(StudyConfig.__dataclass_fields__) - {"networks", "attacks", "algorithm2", "source"}
    unknown = set(study) - known
    if unknown:
        raise ConfigError(f"[study] has unknown keys {sorted(unknown)}")
    nets_raw = raw.get("networks")
    if not isinstance(nets_raw, list) or not nets_raw:
        raise ConfigError("the config needs at least one [[networks]] entry")
    networks = [_network_config(i, entry, base) for i, entry in enumerate(nets_raw)]
    attacks_raw = raw.get("attacks", {name: {} for name in DEFAULT_ATTACKS})
    try:
        attacks = tuple(attack_spec(name, dict(p)) for name, p in attacks_raw.items())
        for a in attacks:
            a.describe()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    alg = dict(raw.get("algorithm2", {}))
    unknown = set(alg) - set(Algorithm2Config.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"[algorithm2] has unknown keys {sorted(unknown)}")
    if "exact_categories" in study:
        study["exact_categories"] = tuple(str(c) for c in study["exact_categories"])
    if "selections" in study:
        study["selections"] = _selections_setting(study["selections"], "[study]")
    if "compare_domains" in study:
        study["compare_domains"] = tuple(str(d) for d in study["compare_domains"])
    data = str(study.pop("data", "mnist"))
    if data.startswith("cifar10:"):
        data = "cifar10:" + str(resolve_path(data.split(":", 1)[1], base))
    elif data not in ("mnist", STANDIN):
        data = str(resolve_path(data, base))
    cfg = StudyConfig(
        networks=tuple(networks),
        attacks=attacks,
        algorithm2=Algorithm2Config(**alg),
        data=data,
        source=source,
        **study,
    )
    if n is not None:
        cfg = replace(cfg, n=int(n), valid_n=None,
                      networks=tuple(replace(x, n=None, valid_n=None) for x in cfg.networks))
    try:
        for domain in (cfg.domain, *cfg.compare_domains):
            replace(cfg, domain=domain).settings  # noqa: B018  (validates the settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.n < 1 or any(x.n is not None and x.n < 1 for x in cfg.networks):
        raise ConfigError("n must be >= 1")
    if cfg.algorithm2.s < 8:
        raise ConfigError("algorithm2.s must be >= 8 (the normality test needs 8 values)")
    return cfg


NETWORK_KEYS = frozenset({"name", "onnx", "train", "dataset", "exact", "n", "valid_n",
                          "selections", "detail"})


def _network_config(i: int, entry: Any, base: Path | None) -> NetworkConfig:
    """One [[networks]] entry: an ONNX path or a train table, plus per-network settings."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"networks[{i}] needs a name")
    name = str(entry["name"])
    unknown = set(entry) - NETWORK_KEYS
    if unknown:
        raise ConfigError(f"network {name!r} has unknown keys {sorted(unknown)}")
    onnx = entry.get("onnx")
    train = entry.get("train")
    if onnx is None and train is None:
        raise ConfigError(f"network {name!r} needs 'onnx' or a 'train' table")
    onnx_path = resolve_path(str(onnx), base) if onnx is not None else None
    if onnx_path is not None and train is None and not onnx_path.is_file():
        raise ConfigError(f"network {name!r}: ONNX file {onnx} not found")
    train = dict(train) if isinstance(train, dict) else ({} if train else None)
    if train is not None and set(train) - {"epochs", "seed", "arch"}:
        raise ConfigError(f"network {name!r}: train takes epochs, seed and arch")
    sels = entry.get("selections")
    return NetworkConfig(
        name=name,
        onnx=onnx_path,
        dataset=str(entry.get("dataset", "MNIST")),
        train_epochs=None if train is None else int(train.get("epochs", 10)),
        train_seed=0 if train is None else int(train.get("seed", 0)),
        train_arch=None if train is None or "arch" not in train else str(train["arch"]),
        exact=entry.get("exact"),
        n=None if entry.get("n") is None else int(entry["n"]),
        valid_n=None if entry.get("valid_n") is None else int(entry["valid_n"]),
        selections=None if sels is None else _selections_setting(sels, f"network {name!r}"),
        detail=bool(entry.get("detail", True)),
    )


def _selections_setting(value: Any, where: str) -> tuple[str, ...]:
    sels = tuple(str(v) for v in value) if isinstance(value, list) else ()
    if not sels or not set(sels) <= set(SELECTIONS) or "first" not in sels:
        raise ConfigError(f"{where}: selections must be a list with \"first\" and optionally "
                          "\"random\"")
    return tuple(s for s in SELECTIONS if s in sels)


def select_networks(cfg: StudyConfig, names: list[str]) -> StudyConfig:
    """The config restricted to the named networks (in the config's order)."""
    known = {n.name for n in cfg.networks}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"networks {missing} are not in the config (it has {sorted(known)})")
    return replace(cfg, networks=tuple(n for n in cfg.networks if n.name in names))


# ----------------------------------------------------------------------------- data and models


@dataclass(frozen=True)
class Dataset:
    """Test images as uint8 [N, C, H, W] (pixels / 255 are the inputs) and int64 labels."""

    name: str
    x: np.ndarray
    y: np.ndarray

    @property
    def digest(self) -> str:
        """SHA-256 of images and labels (part of the prediction cache key)."""
        h = hashlib.sha256(np.ascontiguousarray(self.x).tobytes())
        h.update(np.asarray(self.y, dtype=np.int64).tobytes())
        return h.hexdigest()

    def floats(self, idx: np.ndarray | list[int]) -> np.ndarray:
        """The selected images as float32 in [0, 1] (pixels / 255, as served)."""
        return self.x[np.asarray(idx, dtype=np.int64)].astype(np.float32) / np.float32(255.0)


def load_dataset(spec: str) -> Dataset:
    """``mnist``: the 10k MNIST test set (study.data.load_mnist); ``mnist-colour``: the same
    padded to 3x32x32 (study.data.mnist_colour, a stand-in for CIFAR-10); ``cifar10:PATH``: the
    CIFAR-10 python ``test_batch`` (file or directory); else an NPZ with uint8 ``x`` and labels
    ``y`` ([N, H, W] grey or [N, C, H, W])."""
    if spec == STANDIN:
        from study.data import load_mnist, mnist_colour, to_uint8

        data = mnist_colour(load_mnist(), n_train=0)
        return Dataset("MNIST padded to 3x32x32 (10k)", to_uint8(data.test_x),
                       data.test_y.astype(np.int64))
    if spec == "mnist":
        from study.data import load_mnist, to_uint8

        data = load_mnist()
        return Dataset("MNIST test (10k)", to_uint8(data.test_x).reshape(-1, 1, 28, 28),
                       data.test_y.astype(np.int64))
    if spec.startswith("cifar10:"):
        from study.data import load_cifar10_test

        path = Path(spec.split(":", 1)[1])
        if not path.exists():
            raise ConfigError(f"CIFAR-10 data {path} not found")
        x, y = load_cifar10_test(path)
        return Dataset(f"CIFAR-10 {path.name} ({len(x)} images)", x, y)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"data file {path} not found")
    with np.load(path, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    if x.dtype != np.uint8:
        raise ConfigError(f"{path}: x must be uint8 pixels")
    if x.ndim == 3:
        x = x[:, None]  # [N, H, W] grey images
    return Dataset(f"{path.name} ({len(x)} images)", x, y.astype(np.int64).reshape(-1))


def network_path(netcfg: NetworkConfig, out: Path) -> Path:
    """The ONNX file of a network: the configured one, else ``<out>/models/<name>.onnx``."""
    if netcfg.onnx is not None and netcfg.onnx.is_file():
        return netcfg.onnx
    if netcfg.train_epochs is None:
        raise ConfigError(f"network {netcfg.name!r}: {netcfg.onnx} not found")
    return netcfg.onnx or out / "models" / f"{netcfg.name}.onnx"


def ensure_network(
    netcfg: NetworkConfig, out: Path, data_spec: str = "mnist", threads: int = 2
) -> Path:
    """The network's ONNX file, training and exporting it with study.train when missing: on
    CIFAR-10's training batches when the study's data is ``cifar10:PATH``, on the first
    STANDIN_TRAIN images of the colour stand-in for ``mnist-colour``, else on MNIST's."""
    path = network_path(netcfg, out)
    if path.is_file():
        return path
    from study.data import load_cifar10, load_mnist, mnist_colour
    from study.export import export_onnx
    from study.nets import parse_net_name
    from study.train import train

    spec = parse_net_name(netcfg.arch(), seed=netcfg.train_seed)
    if data_spec.startswith("cifar10:"):
        try:
            data = load_cifar10(data_spec.split(":", 1)[1])
        except ValueError as exc:
            raise ConfigError(f"cannot train {netcfg.name}: {exc}") from None
    elif data_spec == STANDIN:
        data = mnist_colour(load_mnist(), n_train=STANDIN_TRAIN)
    else:
        data = load_mnist()
    if tuple(data.test_x.shape[1:]) != spec.input_shape:
        raise ConfigError(f"{netcfg.name} takes inputs {spec.input_shape}, the data has "
                          f"{tuple(data.test_x.shape[1:])}")
    log.info("training %s for %d epochs", netcfg.name, netcfg.train_epochs)
    model, acc = train(spec, data, int(netcfg.train_epochs or 10), netcfg.train_seed, threads)
    meta = {"radiusguard.net": spec.name, "radiusguard.input": "uint8 pixels / 255"}
    export_onnx(model, path, check_x=data.test_x[:256], metadata=meta,
                input_shape=spec.input_shape)
    log.info("trained %s: test accuracy %.4f -> %s", netcfg.name, acc, path)
    return path


def activation_of(net: Network) -> str:
    """relu, sigmoid or tanh: the network's (first) activation kind."""
    for layer in net.layers:
        if isinstance(layer, Sigmoid):
            return "sigmoid"
        if isinstance(layer, Tanh):
            return "tanh"
    return "relu"


def is_fnn(net: Network) -> bool:
    """True when the network has no convolution or pooling layer."""
    return not any(isinstance(layer, Conv | MaxPool) for layer in net.layers)


# ----------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class Cache:
    """Content-addressed ``.npz`` files under one directory (None: no caching)."""

    root: Path | None

    def key(self, *parts: Any) -> str:
        """SHA-256 of the JSON of `parts`: everything an entry depends on."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def load(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under (kind, key), or None when absent or unreadable."""
        if self.root is None:
            return None
        path = self.root / kind / f"{key[:32]}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None

    def save(self, kind: str, key: str, **arrays: np.ndarray) -> None:
        """Store arrays under (kind, key), atomically (an interrupted run leaves no torn file)."""
        if self.root is None:
            return
        path = self.root / kind / f"{key[:32]}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    def sub(self, name: str) -> Path | None:
        """A subdirectory for another cache (the attacks'), or None without caching."""
        return None if self.root is None else self.root / name


# ----------------------------------------------------------------------------- computation


def _bar(total: int, desc: str):
    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


def predictions(net: Network, data: Dataset, cache: Cache) -> np.ndarray:
    """Our float64 Network's predicted class of every test image (cached)."""
    key = cache.key("pred", net.sha256, data.digest)
    hit = cache.load("pred", key)
    if hit is not None:
        return hit["pred"]
    out = np.empty(len(data.y), dtype=np.int64)
    with _bar(len(out), f"{net.name} predictions") as bar:
        for start in range(0, len(out), 500):
            chunk = data.floats(np.arange(start, min(start + 500, len(out))))
            logits = np.atleast_2d(net.forward(chunk.reshape(len(chunk), -1)))
            out[start : start + len(chunk)] = np.argmax(logits, axis=1)
            bar.update(len(chunk))
    cache.save("pred", key, pred=out)
    return out


def radii_of(
    net: Network, xs: np.ndarray, cfg: StudyConfig, cache: Cache, desc: str
) -> dict[str, np.ndarray]:
    """Certified radius, certified class, domain passes and seconds of each input (cached).

    Seconds are each chunk's thread-seconds shared equally among its inputs (radii are
    computed in batches)."""
    xs = np.ascontiguousarray(xs, dtype=np.float32).reshape(len(xs), net.input_size)
    key = cache.key("radii", net.sha256, cfg.domain, VERIFIER_VERSION, cfg.up, cfg.tol, cfg.search,
                    hashlib.sha256(xs.tobytes()).hexdigest())
    hit = cache.load("radii", key)
    if hit is not None:
        return hit
    settings = cfg.settings
    plan = plan_for(net, settings)
    jobs = max(1, cfg.jobs)
    rows: list[tuple[float, int, int, float]] = []
    with _bar(len(xs), desc) as bar:
        for start in range(0, len(xs), 8 * jobs):
            part = xs[start : start + 8 * jobs].astype(np.float64)
            t0 = time.perf_counter()
            results = score_many(plan, part, settings, jobs)
            share = (time.perf_counter() - t0) * min(jobs, len(part)) / len(part)
            rows += [(r.radius, r.predicted, r.calls, share) for r in results]
            bar.update(len(part))
    out = {
        "radius": np.array([r[0] for r in rows], dtype=np.float64),
        "predicted": np.array([r[1] for r in rows], dtype=np.int64),
        "calls": np.array([r[2] for r in rows], dtype=np.int64),
        "seconds": np.array([r[3] for r in rows], dtype=np.float64),
    }
    cache.save("radii", key, **out)
    return out


def exact_radii(
    net: Network, xs: np.ndarray, approx: np.ndarray, cfg: StudyConfig, cache: Cache, desc: str
) -> dict[str, np.ndarray] | str:
    """Exact MILP radii (verifier.exact) of inputs, or a message saying why there are none."""
    try:
        from verifier.exact import exact_radius
    except ImportError as exc:
        return f"verifier.exact is not available ({exc}); no exact radii"
    xs = np.ascontiguousarray(xs, dtype=np.float32).reshape(len(xs), net.input_size)
    key = cache.key("exact", net.sha256, cfg.up, cfg.exact_time_limit,
                    hashlib.sha256(xs.tobytes()).hexdigest())
    hit = cache.load("exact", key)
    if hit is not None:
        return hit
    def one(x: np.ndarray) -> tuple[float, str, float]:
        t0 = time.perf_counter()
        res = exact_radius(net, x.astype(np.float64), max_eps=cfg.up,
                           time_limit=cfg.exact_time_limit)
        return float(res.radius), str(res.status), time.perf_counter() - t0

    rows: list[tuple[float, str, float]] = []
    try:
        with _bar(len(xs), desc) as bar, ThreadPoolExecutor(max(1, cfg.jobs)) as pool:
            for row in pool.map(one, xs):
                rows.append(row)
                bar.update(1)
    except Exception as exc:  # e.g. a sigmoid network: report it, do not fail the study
        return f"exact radii unavailable for {net.name}: {exc}"
    radius = [r[0] for r in rows]
    status = [r[1] for r in rows]
    out = {"exact": np.array(radius), "approx": np.asarray(approx, dtype=np.float64),
           "status": np.array(status, dtype="U16"),
           "seconds": np.array([r[2] for r in rows])}
    cache.save("exact", key, **out)
    return out


def compare_domains(
    net: Network, first_inputs: Mapping[str, np.ndarray], sets: Mapping[str, Any],
    cfg: StudyConfig, cache: Cache, name: str,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Radii and seconds of every category's first-N inputs under each compared domain (the
    study's own domain included, from the sets already computed)."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for domain in dict.fromkeys((cfg.domain, *cfg.compare_domains)):
        per_cat = {}
        for cat, xs in first_inputs.items():
            if domain == cfg.domain:
                r = sets[cat]["first"]
            else:
                r = radii_of(net, xs, replace(cfg, domain=domain), cache, f"{name} {cat} {domain}")
            per_cat[cat] = {k: r[k] for k in ("radius", "predicted", "calls", "seconds")}
        out[domain] = per_cat
    return out


def _chunk_size(n: int) -> int:
    return max(8, math.ceil(1.25 * n))


def adversarial_set(
    net: Network,
    onnx_path: Path,
    spec: AttackSpec,
    data: Dataset,
    order: np.ndarray,
    n: int,
    cfg: StudyConfig,
    cache: Cache,
    classifier: Any,
) -> dict[str, Any]:
    """The first n successful adversarial examples from sources taken in `order` (in chunks)."""
    xs, src, tried, seconds = [], [], 0, 0.0
    chunk = _chunk_size(n)
    limit = min(len(order), cfg.max_attack_sources * n)
    for start in range(0, limit, chunk):
        idx = order[start : min(start + chunk, limit)]
        res = run_attack(net, onnx_path, spec, data.x, data.y, idx, cache.sub("attacks"),
                         classifier)
        xs.append(res.x)
        src.append(res.source)
        tried += res.tried
        seconds += res.seconds
        if sum(len(s) for s in src) >= n:
            break
    x = np.concatenate(xs)[:n] if xs else np.zeros((0, *net.input_shape), np.float32)
    source = np.concatenate(src)[:n] if src else np.zeros(0, np.int64)
    return {"x": x, "index": source, "tried": tried, "seconds": seconds,
            "succeeded": int(sum(len(s) for s in src))}


def _selections(pool: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """First n of `pool` (in index order) and a random n of it (without replacement)."""
    first = pool[:n]
    random = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)) if len(pool) else pool
    return {"first": first, "random": random}


def study_network(
    netcfg: NetworkConfig,
    data: Dataset,
    cfg: StudyConfig,
    out: Path,
    cache: Cache,
) -> dict[str, Any]:
    """All measurements of one network: per category and selection, indices and radii."""
    onnx_path = ensure_network(netcfg, out, cfg.data, cfg.torch_threads)
    net = load_onnx(onnx_path)
    if net.input_size != data.x[0].size:
        raise ConfigError(f"{netcfg.name}: input size {net.input_size} does not match the data")
    pred = predictions(net, data, cache)
    n = cfg.n_of(netcfg)
    sels = cfg.selections_of(netcfg)
    correct = pred == data.y
    valid_pool = np.flatnonzero(correct)
    mis_pool = np.flatnonzero(~correct)
    t0 = time.perf_counter()
    rec: dict[str, Any] = {
        "name": netcfg.name, "onnx": _shown(str(onnx_path)), "sha256": net.sha256,
        "dataset": netcfg.dataset, "activation": activation_of(net), "fnn": is_fnn(net),
        "n_test": int(len(data.y)), "accuracy": float(correct.mean()), "sets": {},
        "attacks": {}, "n": n, "valid_n": cfg.valid_n_of(netcfg), "selections": list(sels),
        "detail": netcfg.detail,
    }
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    first_inputs: dict[str, np.ndarray] = {}
    for cat, pool in (("valid", valid_pool), ("misclassified", mis_pool)):
        rng = np.random.default_rng([cfg.seed, NATURAL.index(cat)])
        sets[cat] = {}
        count = cfg.valid_n_of(netcfg) if cat == "valid" else n
        for sel, idx in _selections(pool, count, rng).items():
            if sel not in sels:
                continue
            xs = data.floats(idx)
            r = radii_of(net, xs, cfg, cache, f"{netcfg.name} {cat}/{sel}")
            sets[cat][sel] = {"index": idx, **r}
            if sel == "first":
                first_inputs[cat] = xs
    classifier = LazyClassifier(onnx_path, net.input_shape, net.n_outputs)
    for k, spec in enumerate(cfg.attacks):
        orders = {
            "first": valid_pool,
            "random": np.random.default_rng([cfg.seed, 100 + k]).permutation(valid_pool),
        }
        sets[spec.name] = {}
        rec["attacks"][spec.name] = {"params": spec.describe()}
        for sel, order in orders.items():
            if sel not in sels:
                continue
            adv = adversarial_set(net, onnx_path, spec, data, order, n, cfg, cache, classifier)
            r = radii_of(net, adv["x"], cfg, cache, f"{netcfg.name} {spec.name}/{sel}")
            sets[spec.name][sel] = {"index": adv["index"], **r}
            if sel == "first":
                first_inputs[spec.name] = adv["x"]
            rec["attacks"][spec.name][sel] = {
                k2: adv[k2] for k2 in ("tried", "succeeded", "seconds")
            }
    # Algorithm 2's seed window: valid inputs outside the first-n stream.
    stream_valid = set(sets["valid"]["first"]["index"].tolist())
    rest = np.array([i for i in valid_pool if i not in stream_valid], dtype=np.int64)
    rng = np.random.default_rng([cfg.seed, 7])
    seed_idx = np.sort(rng.choice(rest, size=min(cfg.algorithm2.s, len(rest)), replace=False))
    seed = radii_of(net, data.floats(seed_idx), cfg, cache, f"{netcfg.name} seed window")
    rec["seed_window"] = {"index": seed_idx, **seed}
    rec["sets"] = sets
    if cfg.compare_domains and netcfg.detail:
        rec["domains"] = compare_domains(net, first_inputs, sets, cfg, cache, netcfg.name)
    want_exact = netcfg.exact if netcfg.exact is not None else cfg.exact
    if want_exact and rec["fnn"]:
        rec["exact"] = {}
        for cat in cfg.exact_categories or cfg.categories:
            if cat not in sets:
                continue
            s = sets[cat]["first"]
            m = min(cfg.exact_n, len(s["radius"]))
            if m == 0:
                continue
            xs = first_inputs[cat][:m]
            ex = exact_radii(net, xs, s["radius"][:m], cfg, cache, f"{netcfg.name} exact {cat}")
            if isinstance(ex, str):
                rec["exact_note"] = ex
                log.warning("%s", ex)
                rec.pop("exact")
                break
            rec["exact"][cat] = ex
    elif want_exact:
        rec["exact_note"] = "exact radii are computed for fully connected networks only"
    rec["seconds"] = time.perf_counter() - t0
    return rec


# ----------------------------------------------------------------------------- entry point


def run_study(config: StudyConfig, out: str | Path, use_cache: bool = True) -> Path:
    """Run the whole study and write results.json and the report into `out`; returns report.md."""
    from study import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(out / "cache" if use_cache else None)
    _limit_threads(config.torch_threads)
    t0 = time.perf_counter()
    data = load_dataset(config.data)
    records = []
    for netcfg in config.networks:
        log.info("study of %s", netcfg.name)
        records.append(study_network(netcfg, data, config, out, cache))
    results = {
        "version": RESULTS_VERSION,
        "config": _config_record(config),
        "dataset": data.name,
        "networks": records,
        "seconds": time.perf_counter() - t0,
    }
    (out / "results.json").write_text(json.dumps(_plain(results), indent=1) + "\n")
    return report.write_report(_plain(results), out)


def _limit_threads(n: int) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, n))
    except ImportError:
        pass


def _config_record(cfg: StudyConfig) -> dict[str, Any]:
    return {
        "source": cfg.source, "n": cfg.n, "seed": cfg.seed, "data": _shown(cfg.data), "up": cfg.up,
        "tol": cfg.tol, "search": cfg.search, "domain": cfg.domain,
        "compare_domains": list(cfg.compare_domains), "jobs": cfg.jobs, "exact": cfg.exact,
        "exact_n": cfg.exact_n, "exact_time_limit": cfg.exact_time_limit,
        "exact_categories": list(cfg.exact_categories or cfg.categories),
        "categories": list(cfg.categories),
        "attacks": {a.name: a.describe() for a in cfg.attacks},
        "algorithm2": dict(vars(cfg.algorithm2)),
        "networks": [n.name for n in cfg.networks],
    }


def _plain(obj: Any) -> Any:
    """JSON-ready copy: arrays to lists, numpy scalars to Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _shown(path: str) -> str:
    """A path as a report shows it: relative to the working directory when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path
