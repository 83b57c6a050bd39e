"""Calibration profiles: the validation parameters fitted to one model on valid inputs
(fitted by worker.calibrate).

A profile is JSON (`save_profile` / `load_profile`) and names the sha256 of the ONNX model it
was calibrated for, so a worker refuses to validate another model with it (`check_model`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verifier.network import Network
from verifier.settings import STAGES, VerifierSettings
from worker.validate import (
    MIN_WINDOW,
    ConsistencyValidator,
    DistributionValidator,
    WindowState,
)

__all__ = [
    "FORMAT",
    "POLICIES",
    "AttackStats",
    "CalibrationStats",
    "Profile",
    "ProfileError",
    "VerifierSettings",
    "check_model",
    "load_profile",
    "profile_from_dict",
    "save_profile",
]

FORMAT = 1
# The policies' names; worker.policy.POLICIES is their registry, in this order.
POLICIES = ("threshold", "distribution", "consistency")


class ProfileError(ValueError):
    """A profile file is unreadable or malformed, or does not belong to the model given."""


@dataclass(frozen=True)
class CalibrationStats:
    """What calibration saw: n correctly classified inputs (of n_inputs) give the valid radii.

    false_alarm_measured is the radius threshold rule's rate on all n valid radii;
    false_alarm_at_budget the threshold policy's: the share of the n not proved at the
    guaranteed budget by the stages serving runs (proved_by counts each stage's proofs);
    false_alarm_distribution is Algorithm 2's rate replayed over the valid radii after the seed.
    """

    n: int
    n_inputs: int
    accuracy: float
    mean_radius: float
    normality_pvalue: float | None
    false_alarm_target: float
    false_alarm_measured: float
    false_alarm_distribution: float | None = None
    false_alarm_consistency: float | None = None
    false_alarm_at_budget: float | None = None
    proved_by: Mapping[str, int] | None = None


@dataclass(frozen=True)
class AttackStats:
    """Radii of one adversarial set against the valid ones.

    rejection_rate: threshold rule; rejection_rate_distribution: Algorithm 2 from the seed
    window; roc: (threshold, fpr, tpr) with reject iff radius < threshold; auc: trapezoid.
    """

    n: int
    mean_radius: float
    rejection_rate: float
    rejection_rate_distribution: float
    auc: float
    roc: tuple[tuple[float, float, float], ...] = ()
    rejection_rate_consistency: float | None = None


@dataclass(frozen=True)
class Profile:
    """Validation parameters for one model; policy is the default (a name in POLICIES);
    consistency is None in profiles calibrated before that policy existed. guaranteed_budget
    is the eps at which the threshold policy proves every input it accepts (None in older
    profiles: their radius threshold is used as the budget)."""

    name: str
    model_sha256: str
    policy: str
    threshold: float
    sigma0: float
    sigma1: float
    window_size: int
    seed_window: tuple[float, ...]
    verifier: VerifierSettings
    calibration: CalibrationStats
    attacks: Mapping[str, AttackStats] = field(default_factory=dict)
    consistency: ConsistencyValidator | None = None
    guaranteed_budget: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed_window", tuple(float(r) for r in self.seed_window))
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("threshold", "sigma0", "sigma1"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.window_size < MIN_WINDOW:
            raise ValueError(f"window_size must be >= {MIN_WINDOW}, got {self.window_size}")
        budget = self.guaranteed_budget
        if budget is not None and not (math.isfinite(budget) and budget >= 0):
            raise ValueError(f"guaranteed_budget must be finite and >= 0, got {budget}")
        if len(self.seed_window) != self.window_size:
            raise ValueError(
                f"seed_window has {len(self.seed_window)} radii, window_size is {self.window_size}"
            )
        if not all(math.isfinite(r) and r >= 0 for r in self.seed_window):
            raise ValueError("seed_window radii must be finite and >= 0")
        if self.policy == "consistency" and self.consistency is None:
            raise ValueError("policy consistency needs the consistency parameters")

    def initial_state(self) -> WindowState:
        """Algorithm 2's state before any input: the seed window."""
        return DistributionValidator(self.sigma0, self.sigma1, self.window_size).initial_state(
            self.seed_window
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, with a format number."""
        d = asdict(self)
        d["seed_window"] = list(self.seed_window)
        d["attacks"] = {
            k: {**asdict(a), "roc": [list(p) for p in a.roc]} for k, a in self.attacks.items()
        }
        return {"format": FORMAT, **d}


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write the profile as JSON (strict: no NaN), replacing the file atomically."""
    path = Path(path)
    text = json.dumps(profile.to_dict(), indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_profile(path: str | Path) -> Profile:
    """Read a profile written by save_profile; ProfileError says what is wrong and where."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid JSON: {exc}") from None
    try:
        return profile_from_dict(data)
    except ProfileError as exc:
        raise ProfileError(f"profile {path}: {exc}") from None


def profile_from_dict(data: Any) -> Profile:
    """Build a Profile from parsed JSON, checking every field's presence and type."""
    top = _Fields(data, "profile")
    fmt = data.get("format", FORMAT) if isinstance(data, dict) else FORMAT
    if fmt != FORMAT:
        raise ProfileError(f"unsupported profile format {fmt!r} (this version reads {FORMAT})")
    ver = _Fields(top.get("verifier", dict), "verifier")
    cal = _Fields(top.get("calibration", dict), "calibration")
    attacks = {}
    for name, raw in top.get("attacks", dict, default={}).items():
        a = _Fields(raw, f"attacks.{name}")
        roc = []
        for i, p in enumerate(a.get("roc", list, default=[])):
            if not (isinstance(p, list) and len(p) == 3 and all(_is_num(v) for v in p)):
                raise ProfileError(f"attacks.{name}.roc[{i}] must be [threshold, fpr, tpr]")
            roc.append((float(p[0]), float(p[1]), float(p[2])))
        attacks[name] = AttackStats(
            n=a.get("n", int),
            mean_radius=a.get("mean_radius", float),
            rejection_rate=a.get("rejection_rate", float),
            rejection_rate_distribution=a.get("rejection_rate_distribution", float),
            auc=a.get("auc", float),
            roc=tuple(roc),
            rejection_rate_consistency=a.get(
                "rejection_rate_consistency", float, optional=True, default=None
            ),
        )
    seed = top.get("seed_window", list)
    if not all(_is_num(r) for r in seed):
        raise ProfileError("field 'seed_window' must be a list of numbers")
    try:
        return Profile(
            name=top.get("name", str),
            model_sha256=top.get("model_sha256", str),
            policy=top.get("policy", str),
            threshold=top.get("threshold", float),
            sigma0=top.get("sigma0", float),
            sigma1=top.get("sigma1", float),
            window_size=top.get("window_size", int),
            seed_window=tuple(float(r) for r in seed),
            verifier=VerifierSettings(
                domain=ver.get("domain", str, default="deepzono"),
                search=ver.get("search", str),
                up=ver.get("up", float),
                tol=ver.get("tol", float),
                input_lower=ver.get("input_lower", float, optional=True, default=None),
                input_upper=ver.get("input_upper", float, optional=True, default=None),
                stages=tuple(_stages(ver.get("stages", list, default=list(STAGES)))),
            ),
            guaranteed_budget=top.get("guaranteed_budget", float, optional=True, default=None),
            calibration=CalibrationStats(
                n=cal.get("n", int),
                n_inputs=cal.get("n_inputs", int),
                accuracy=cal.get("accuracy", float),
                mean_radius=cal.get("mean_radius", float),
                normality_pvalue=cal.get("normality_pvalue", float, optional=True),
                false_alarm_target=cal.get("false_alarm_target", float),
                false_alarm_measured=cal.get("false_alarm_measured", float),
                false_alarm_distribution=cal.get(
                    "false_alarm_distribution", float, optional=True, default=None
                ),
                false_alarm_consistency=cal.get(
                    "false_alarm_consistency", float, optional=True, default=None
                ),
                false_alarm_at_budget=cal.get(
                    "false_alarm_at_budget", float, optional=True, default=None
                ),
                proved_by=_proved_by(cal.get("proved_by", dict, optional=True, default=None)),
            ),
            attacks=attacks,
            consistency=_consistency_from(top.get("consistency", dict, optional=True,
                                                  default=None)),
        )
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def _consistency_from(raw: dict | None) -> ConsistencyValidator | None:
    if raw is None:
        return None
    c = _Fields(raw, "consistency")
    mean, inv = c.get("mean", list), c.get("inv_cov", list)
    if not (len(mean) == 2 and all(_is_num(v) for v in mean)):
        raise ProfileError("field 'consistency.mean' must be a list of 2 numbers")
    if not (len(inv) == 2 and all(
        isinstance(row, list) and len(row) == 2 and all(_is_num(v) for v in row) for row in inv
    )):
        raise ProfileError("field 'consistency.inv_cov' must be a 2x2 list of numbers")
    return ConsistencyValidator(
        (float(mean[0]), float(mean[1])),
        ((float(inv[0][0]), float(inv[0][1])), (float(inv[1][0]), float(inv[1][1]))),
        c.get("cutoff", float),
    )


def check_model(profile: Profile, net: Network) -> None:
    """Raise ProfileError unless the network is the model the profile was calibrated for."""
    if net.sha256 != profile.model_sha256:
        given = f"{net.sha256[:12]}…" if net.sha256 else "no sha256 (not loaded from a file)"
        raise ProfileError(
            f"profile {profile.name} was calibrated for model sha256 "
            f"{profile.model_sha256[:12]}…, but the model given has {given}"
        )


def check_settings(profile: Profile, domain: str | None = None, search: str | None = None) -> None:
    """Raise ProfileError when a requested domain or search differs from the profile's:
    radii of another domain or search are on another scale than the calibrated threshold."""
    v = profile.verifier
    for what, wanted, have in (("domain", domain, v.domain), ("search", search, v.search)):
        if wanted is not None and wanted != have:
            raise ProfileError(
                f"profile {profile.name} was calibrated with {what} {have}, not {wanted}; "
                f"recalibrate with --{what} {wanted} or serve with --{what} {have}"
            )


def _proved_by(raw: dict | None) -> dict[str, int] | None:
    if raw is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in raw.items()):
        raise ProfileError("field 'calibration.proved_by' must map stage names to counts")
    return dict(raw)


def _stages(raw: list) -> list[str]:
    if not all(isinstance(s, str) for s in raw):
        raise ProfileError("field 'verifier.stages' must be a list of domain names")
    return raw


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Fields:
    """Typed access to one JSON object's fields, with ProfileErrors naming the field."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            raise ProfileError(f"{where} must be a JSON object")
        self.data, self.where = data, where

    _MISSING = object()

    def get(self, key: str, kind: type, optional: bool = False, default: Any = _MISSING) -> Any:
        name = key if self.where == "profile" else f"{self.where}.{key}"
        if key not in self.data:
            if default is not _Fields._MISSING:
                return default
            raise ProfileError(f"missing field '{name}'")
        v = self.data[key]
        if v is None and optional:
            return None
        if kind is float and _is_num(v):
            return float(v)
        if kind is dict and isinstance(v, dict):
            return v
        if isinstance(v, kind) and not (kind is int and isinstance(v, bool)):
            return v
        raise ProfileError(f"field '{name}' must be {_KINDS.get(kind, kind.__name__)}")


_KINDS = {float: "a number", int: "an integer", str: "a string", list: "a list", dict: "an object"}
