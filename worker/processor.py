"""The stream logic without Kafka: consumed records in, verdicts, dead letters and window
states out. The service feeds it batches from the broker; tests and `replay --offline` feed it
lists. Per stream the records are taken in offset order, so verdicts keep input order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from verifier.radius import RadiusResult, radius_result
from verifier.zonotope import ZonoNet
from worker.codec import Invalid, Limits, Verdict, decode_input
from worker.profile import Profile
from worker.validate import DistributionValidator, ThresholdValidator, WindowState

DEFAULT_STREAM = "_default"


@dataclass(frozen=True)
class Record:
    """One consumed input record, as the broker gave it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be decoded, kept byte for byte, with the reason."""

    key: bytes | None
    value: bytes | None
    error: str
    source: Record


@dataclass
class BatchResult:
    """What one batch produced: verdicts in input order per stream, dead letters, new states."""

    verdicts: list[tuple[bytes, Verdict]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    states: dict[tuple[int, str], WindowState] = field(default_factory=dict)


class Scorer:
    """Certified radii of many inputs on a pool of threads (the kernels release the GIL)."""

    def __init__(self, znet: ZonoNet, up: float, tol: float, search: str, jobs: int):
        self.znet, self.up, self.tol, self.search = znet, up, tol, search
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="radius")

    def score(self, xs: Sequence[np.ndarray]) -> list[RadiusResult]:
        """Radius results in input order."""
        return list(self.pool.map(self._one, xs))

    def _one(self, x: np.ndarray) -> RadiusResult:
        return radius_result(self.znet, x, self.up, self.tol, self.search)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class Processor:
    """Decode, score and validate batches of records; holds no Kafka objects."""

    def __init__(
        self,
        znet: ZonoNet,
        profile: Profile,
        policy: str,
        scorer: Scorer,
        limits: Limits | None = None,
        worker_id: str = "worker",
    ):
        if policy not in ("threshold", "distribution"):
            raise ValueError(f"policy must be 'threshold' or 'distribution', got {policy!r}")
        self.znet = znet
        self.profile = profile
        self.policy = policy
        self.scorer = scorer
        self.limits = limits or Limits()
        self.worker_id = worker_id
        self.threshold = ThresholdValidator(profile.threshold)
        self.distribution = DistributionValidator(
            profile.sigma0, profile.sigma1, profile.window_size
        )

    def initial_state(self) -> WindowState:
        """The window every new stream starts from: the profile's seed window."""
        return self.distribution.initial_state(self.profile.seed_window)

    def process(
        self, records: Sequence[Record], states: dict[tuple[int, str], WindowState]
    ) -> BatchResult:
        """One batch. `states` maps (partition, stream) to the current window; not modified."""
        started = time.monotonic()
        result = BatchResult()
        decoded = [
            decode_input(r.key, r.value if r.value is not None else b"", self.limits,
                         self.znet.net.input_size)
            for r in records
        ]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, Invalid)]
        scores = dict(zip(good, self.scorer.score([decoded[i].x for i in good]), strict=True))
        current = dict(states)
        order = sorted(range(len(records)), key=lambda i: (records[i].partition, records[i].offset))
        for i in order:
            rec, dec = records[i], decoded[i]
            stream = _stream_of(rec.key)
            key = rec.key if rec.key is not None else DEFAULT_STREAM.encode()
            source = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
            latency = (time.monotonic() - started) * 1000.0
            if isinstance(dec, Invalid):
                result.dead_letters.append(DeadLetter(rec.key, rec.value, dec.reason, rec))
                verdict = self._verdict(
                    dec.id or "", stream, "invalid", None, None, "decode", dec.reason, None,
                    source, latency, None, None,
                )
                result.verdicts.append((key, verdict))
                continue
            score = scores[i]
            slot = (rec.partition, stream)
            if self.policy == "threshold":
                decision = self.threshold.check(score.radius)
            else:
                state = current.get(slot) or self.initial_state()
                decision, state = self.distribution.step(state, score.radius, rec.offset)
                current[slot] = state
                result.states[slot] = state
            verdict = self._verdict(
                dec.id, stream, decision.verdict, score.predicted, score.radius, decision.rule,
                decision.reason, decision.pvalue, source, latency, dec.label, dec.meta,
            )
            result.verdicts.append((key, verdict))
        return result

    def _verdict(
        self, id_, stream, verdict, predicted, radius, rule, reason, pvalue, source, latency,
        label, meta,
    ) -> Verdict:
        return Verdict(
            id=id_, stream=stream, verdict=verdict, predicted=predicted, radius=radius, rule=rule,
            reason=reason, pvalue=pvalue, model=self.znet.net.sha256, profile=self.profile.name,
            source=source, latency_ms=round(latency, 3), worker=self.worker_id, label=label,
            meta=meta,
        )


def _stream_of(key: bytes | None) -> str:
    if not key:
        return DEFAULT_STREAM
    return key.decode("utf-8", errors="replace")
