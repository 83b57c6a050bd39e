"""The stream logic without Kafka: consumed records in, verdicts, dead letters and window
states out. The service feeds it batches from the broker; tests and benchmarks feed it lists.
Per partition the records are taken in offset order, so each stream's verdicts keep input order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from verifier.decide import Proof, cascade, stage_plans
from verifier.numerics.runtime import single_threaded
from verifier.score import RadiusResult, radius_result
from verifier.settings import VERIFIER_VERSION, VerifierSettings
from verifier.walk import Plan
from worker.formats.codec import DEFAULT_STREAM, InputRecord, Invalid, Limits, Verdict, decode_input
from worker.policy import Signals, logit_margins, make_validator
from worker.profile import Profile
from worker.validate import WindowState

__all__ = ["BatchResult", "DeadLetter", "Processor", "Record", "Scorer", "Started",
           "certificate_of", "process_all"]

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
    """A record that could not be decoded or verified, kept byte for byte, with the reason."""

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


@dataclass(frozen=True)
class Started:
    """A batch whose radii are being computed: records in offset order per partition, decoded,
    the radius results to come (in that order) and when it started."""

    records: list[Record]
    decoded: list[InputRecord | Invalid]
    scores: Iterator[RadiusResult | Proof | Exception]
    at: float

    @property
    def partitions(self) -> set[int]:
        """The input partitions the batch holds records of."""
        return {r.partition for r in self.records}


class Scorer:
    """Certified radii, or decisions at a budget, of many inputs on a pool of threads (the
    kernels release the GIL)."""

    def __init__(self, plan: Plan, settings: VerifierSettings, jobs: int):
        self.plan, self.settings = plan, settings
        self.stages = stage_plans(plan.net, settings)
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="radius")

    def score(self, xs: Sequence[np.ndarray],
              budget: float | None = None) -> list[RadiusResult | Proof | Exception]:
        """Radius results (budget None) or decisions at the budget, in input order; an input
        whose verification fails yields its error, so one bad input never takes the batch (or
        the worker) down."""
        return list(self.iter_score(xs, budget))

    def iter_score(self, xs: Sequence[np.ndarray],
                   budget: float | None = None) -> Iterator[RadiusResult | Proof | Exception]:
        """Like score, but all inputs are submitted at once and results are yielded in order as
        they finish, so the caller can validate early ones while later ones are verified."""
        if budget is None:
            return self.pool.map(self._radius, xs)
        return self.pool.map(lambda x: self._decide(x, budget), xs)

    def _radius(self, x: np.ndarray) -> RadiusResult | Exception:
        try:
            return radius_result(self.plan, x, self.settings)
        except Exception as exc:  # reported as that input's verdict, never raised
            return exc

    def _decide(self, x: np.ndarray, budget: float) -> Proof | Exception:
        try:
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            label = self.plan.net.predict(x)
            with single_threaded():
                return cascade(self.stages, x, label, self.settings)(budget)
        except Exception as exc:  # reported as that input's verdict, never raised
            return exc

    def close(self) -> None:
        """Wait for running passes and release the threads."""
        self.pool.shutdown(wait=True)


class Processor:
    """Decode, score and validate batches of records; holds no Kafka objects and no state
    between calls (the caller keeps the windows)."""

    def __init__(
        self,
        znet: Plan,
        profile: Profile,
        policy: str,
        scorer: Scorer,
        limits: Limits | None = None,
        worker_id: str = "worker",
    ):
        self.validator = make_validator(profile, policy)  # any entry of worker.policy.POLICIES
        self.znet = znet
        self.profile = profile
        self.policy = self.validator.name
        self.scorer = scorer
        self.limits = limits or Limits()
        self.worker_id = worker_id

    def initial_state(self) -> WindowState | None:
        """The state every new stream starts from (the profile's seed window for Algorithm 2;
        None for the stateless policies)."""
        return self.validator.initial_state()

    def process(
        self, records: Sequence[Record], states: dict[tuple[int, str], WindowState]
    ) -> BatchResult:
        """One batch. `states` maps (partition, stream) to the current window; not modified."""
        return self.finish(self.start(records), states)

    def start(self, records: Sequence[Record]) -> Started:
        """Decode a batch and hand its inputs to the scoring threads; returns at once, so the
        caller can start the next batch before this one is finished (the threads never idle)."""
        at = time.monotonic()
        size = self.znet.net.input_shape  # checks the layout; channels last is transposed
        ordered = sorted(records, key=lambda r: (r.partition, r.offset))
        decoded = [
            decode_input(r.key, r.value if r.value is not None else b"", self.limits, size)
            for r in ordered
        ]
        scores = self.scorer.iter_score([d.x for d in decoded if isinstance(d, InputRecord)],
                                        self.validator.budget)
        return Started(ordered, decoded, scores, at)

    def finish(self, batch: Started, states: dict[tuple[int, str], WindowState]) -> BatchResult:
        """Validate a started batch in offset order as its radii come in: its verdicts, dead
        letters and changed windows. `states` maps (partition, stream) to the current window;
        not modified."""
        started, ordered, decoded, scores = batch.at, batch.records, batch.decoded, batch.scores
        result = BatchResult()
        current = dict(states)
        for rec, dec in zip(ordered, decoded, strict=True):
            key = rec.key if rec.key is not None else DEFAULT_STREAM.encode()
            source = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
            score = next(scores) if isinstance(dec, InputRecord) else None
            latency = (time.monotonic() - started) * 1000.0
            if isinstance(dec, Invalid):
                result.dead_letters.append(DeadLetter(rec.key, rec.value, dec.reason, rec))
                verdict = self._verdict(
                    dec.id, dec.stream, "invalid", None, None, "decode", dec.reason, None,
                    source, latency, None, None,
                )
                result.verdicts.append((key, verdict))
                continue
            if isinstance(score, Exception):
                reason = f"verification failed: {type(score).__name__}: {score}"
                result.dead_letters.append(DeadLetter(rec.key, rec.value, reason, rec))
                verdict = self._verdict(
                    dec.id, dec.stream, "invalid", None, None, "verify", reason, None, source,
                    latency, dec.label, dec.meta,
                )
                result.verdicts.append((key, verdict))
                continue
            margin = None
            if self.validator.needs_margin:
                margin = float(logit_margins(self.znet.net.forward(dec.x.reshape(-1)))[0])
            slot = (rec.partition, dec.stream)
            state = current.get(slot) or self.validator.initial_state()
            proof = score if isinstance(score, Proof) else None
            radius = None if proof else score.radius
            predicted = proof.label if proof else score.predicted
            decision, state = self.validator.step(state, Signals(radius, margin, proof), rec.offset)
            if state is not None:
                current[slot] = state
                result.states[slot] = state
            verdict = self._verdict(
                dec.id, dec.stream, decision.verdict, predicted, radius, decision.rule,
                decision.reason, decision.pvalue, source, latency, dec.label, dec.meta,
                self.certificate(score, dec.preprocessing),
            )
            result.verdicts.append((key, verdict))
        return result

    def certificate(self, score: RadiusResult | Proof, preprocessing: str) -> dict:
        """What was proved for one input (`certificate_of`)."""
        return certificate_of(score, self.scorer.settings, self.znet.net.sha256, preprocessing)

    def _verdict(
        self, id_, stream, verdict, predicted, radius, rule, reason, pvalue, source, latency,
        label, meta, cert=None,
    ) -> Verdict:
        return Verdict(
            id=id_, stream=stream, verdict=verdict, predicted=predicted, radius=radius, rule=rule,
            reason=reason, pvalue=pvalue, model=self.znet.net.sha256, profile=self.profile.name,
            source=source, latency_ms=round(latency, 3), worker=self.worker_id, label=label,
            meta=meta, certificate=cert,
        )


def certificate_of(score: RadiusResult | Proof, settings: VerifierSettings, model_sha256: str,
                   preprocessing: str) -> dict:
    """A verdict's certificate, enough to re-check it offline (`radiusguard recheck`): the
    clipped L-infinity ball of radius eps around the decoded input keeps class `label`, proved
    by `stage` (None: not proved) of this verifier version, for this model. A radius r
    certifies the r-ball by the settings' domain."""
    if isinstance(score, Proof):
        eps, proved, stage, label = score.eps, score.proved, score.stage, score.label
    else:
        eps, proved, stage, label = score.radius, score.radius > 0, settings.domain, score.predicted
    return {"eps": float(eps), "proved": bool(proved), "label": int(label),
            "stage": stage if proved else None, "verifier_version": VERIFIER_VERSION,
            "model_sha256": model_sha256, "norm": "linf", "preprocessing": preprocessing,
            "input_range": [settings.input_lower, settings.input_upper]}  # None: the model's


def process_all(processor: Processor, records: Iterable[Record], batch: int = 32) -> BatchResult:
    """Run records through the processor in batches as one worker would, windows carried over:
    all verdicts, all dead letters and the final windows (the offline reference for a stream)."""
    total = BatchResult()
    pending = list(records)
    for start in range(0, len(pending), batch):
        part = processor.process(pending[start : start + batch], total.states)
        total.states.update(part.states)
        total.verdicts += part.verdicts
        total.dead_letters += part.dead_letters
    return total
