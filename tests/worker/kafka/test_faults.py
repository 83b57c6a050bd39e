"""Fault tolerance against a real broker: workers run as `radiusguard serve` subprocesses and are
SIGKILLed, the broker is restarted, members come and go mid-stream. In every case each input
has exactly one committed verdict and each stream's verdicts equal the single-worker reference.

The inputs cycle through a few hundred distinct images (identical images have identical radii),
so the offline reference costs one radius per distinct image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.partitioner.default import murmur2

from tests.kafka_fixtures import LocalBroker
from tests.worker.kafka.test_service import (
    FNN,
    MNIST,
    UINT8,
    Key,
    Stream,
    VerdictReader,
    _assert_exactly_once,
    _by_stream,
    _key,
    _produce,
)
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from worker.formats.codec import encode_input
from worker.policy import make_validator
from worker.processor import certificate_of
from worker.profile import load_profile

pytestmark = [pytest.mark.kafka, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

ROOT = Path(__file__).resolve().parents[3]
PROFILE = ROOT / "models" / "fnn-3x30-relu.profile.json"
PARTITIONS = 4
STREAMS = 20
PER_STREAM = 250  # 5 000 inputs in all
POOL = 200  # distinct images the streams cycle through
KAFKA_SETTINGS = {  # fast failure detection and reconnection for the test workers
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "reconnect_backoff_max_ms": 1000,
}


# ------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, list]:
    """POOL uint8 images (MNIST digits and some noise) and their radius results."""
    data = np.load(MNIST)
    rng = np.random.default_rng(11)
    xs = np.concatenate([data["x"][200 : 200 + POOL - 40],
                         rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)])
    xs = xs[rng.permutation(POOL)]
    v = load_profile(PROFILE).verifier
    results = score_many(load_onnx(FNN), xs.reshape(POOL, -1) / 255.0, v, jobs=2)
    return xs, results


def _image_index(stream: int, i: int) -> int:
    """Which pool image is input i of stream number `stream` (a different cycle per stream)."""
    return (i * 13 + stream * 29) % POOL


@pytest.fixture(scope="module")
def streams(pool) -> list[Stream]:
    """STREAMS streams of PER_STREAM inputs whose keys cover all PARTITIONS partitions."""
    xs, _ = pool
    names = [f"s{k:02d}" for k in range(STREAMS)]
    covered = {(murmur2(n.encode()) & 0x7FFFFFFF) % PARTITIONS for n in names}
    assert covered == set(range(PARTITIONS))
    return [
        Stream(name, tuple(f"{name}-{i}" for i in range(PER_STREAM)),
               xs[[_image_index(k, i) for i in range(PER_STREAM)]])
        for k, name in enumerate(names)
    ]


@pytest.fixture(scope="module")
def reference(pool) -> dict[str, list[Key]]:
    """Per stream, the verdict sequence one worker computes: Algorithm 2 over the pool radii."""
    _, results = pool
    prof = load_profile(PROFILE)
    sha = load_onnx(FNN).sha256
    out = {}
    for k in range(STREAMS):
        name = f"s{k:02d}"
        validator, state = make_validator(prof, "distribution").rule, prof.initial_state()
        seq = []
        for i in range(PER_STREAM):
            res = results[_image_index(k, i)]
            decision, state = validator.step(state, res.radius)
            seq.append(_key({"id": f"{name}-{i}", "verdict": decision.verdict,
                             "radius": res.radius, "rule": decision.rule,
                             "pvalue": decision.pvalue,
                             "certificate": certificate_of(res, prof.verifier, sha, UINT8)}))
        out[name] = seq
    verdicts = {key[1] for seq in out.values() for key in seq}
    assert {"accept", "reject"} <= verdicts  # both outcomes are exercised
    return out


def _records(streams: list[Stream], part: slice = slice(None)) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the streams' inputs, interleaved round robin, restricted to `part`."""
    for i in range(PER_STREAM)[part]:
        for s in streams:
            yield encode_input(s.ids[i], s.xs[i], stream=s.name, dtype="uint8", label=None)


# ------------------------------------------------------------------------------ workers


class Worker:
    """One `radiusguard serve` subprocess, its output in a log file."""

    def __init__(self, argv: list[str], worker_id: str, log: Path):
        self.worker_id = worker_id
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([*argv, "--worker-id", worker_id], stdout=fh,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         env={**os.environ, "PYTHONFAULTHANDLER": "1"})

    def check(self) -> None:
        """Fail (with the log) if the worker exited."""
        assert self.proc.poll() is None, f"{self.worker_id} exited:\n{self.log.read_text()}"

    def wait_restored(self, timeout: float = 90) -> None:
        """Wait until the worker restored the windows of an assignment (it owns partitions)."""
        deadline = time.monotonic() + timeout
        while '"restored"' not in self.log.read_text():
            self.check()
            assert time.monotonic() < deadline, f"{self.worker_id} never restored windows"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no commit, no group leave, a transaction possibly left open."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def abort(self) -> None:
        """SIGABRT: the log ends with every thread's stack (to see where a worker hung)."""
        self.proc.send_signal(signal.SIGABRT)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM: finish the batch, leave the group; must exit cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log.read_text()


@pytest.fixture
def spawn(tmp_path: Path, pool) -> Iterator[Callable[..., Worker]]:
    """spawn(bootstrap, topic, out, group, worker_id) starts a worker; those still running at
    the end of the test are aborted, leaving their stacks in their logs."""
    started: list[Worker] = []
    kafka_config = tmp_path / "kafka.json"
    kafka_config.write_text(json.dumps(KAFKA_SETTINGS))
    exe = Path(sys.executable).with_name("radiusguard")

    def make(bootstrap: str, topic: str, out: str, group: str, worker_id: str) -> Worker:
        argv = [str(exe), "serve", "--bootstrap", bootstrap, "--model", str(FNN),
                "--profile", str(PROFILE), "--policy", "distribution", "--input-topic", topic,
                "--output-topic", out, "--group", group, "--max-batch", "16", "--jobs", "1",
                "--kafka-config", str(kafka_config)]
        w = Worker(argv, worker_id, tmp_path / f"{worker_id}.log")
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.abort()


def _check_all(workers: list[Worker]) -> Callable[[], None]:
    return lambda: [w.check() for w in workers]


def _wait_for(reader: VerdictReader, ok: Callable[[], bool], check: Callable[[], None],
              what: str, timeout: float = 120) -> None:
    """Poll committed verdicts until ok() holds."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        check()
        reader._poll(200)


def _workers_seen(reader: VerdictReader) -> set[str]:
    return {v["worker"] for _, v in reader.items}


def _assert_reference(verdicts: list[dict], streams: list[Stream], reference) -> None:
    _assert_exactly_once(verdicts, streams, PER_STREAM)
    assert len(verdicts) == STREAMS * PER_STREAM
    assert _by_stream(verdicts) == reference


# ------------------------------------------------------------------------------ tests


def test_worker_killed_and_restarted_mid_stream(
    kafka_bootstrap: str, topic_factory, spawn, streams, reference
) -> None:
    """SIGKILL one of two workers mid-stream and restart it (same id, fencing its open
    transaction): no input lost or duplicated, every stream's verdicts unchanged."""
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    n = _produce(kafka_bootstrap, topic, _records(streams))
    group = f"g-{uuid.uuid4().hex[:8]}"
    workers = [spawn(kafka_bootstrap, topic, out, group, w) for w in ("a", "b")]
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        _wait_for(reader, lambda: _workers_seen(reader) == {"a", "b"} and
                  len(reader.items) >= n // 5, _check_all(workers), "both workers at work")
        workers[1].kill()
        assert len(reader.read_until(0, settle=0.5)) < n, "the stream ended before the kill"
        workers[1] = spawn(kafka_bootstrap, topic, out, group, "b")
        verdicts = reader.read_until(n, timeout=180, check=_check_all(workers), settle=2.0)
    finally:
        reader.close()
    _assert_reference(verdicts, streams, reference)


def test_broker_restart_mid_stream(
    broker_factory: Callable[..., LocalBroker], spawn, streams, reference
) -> None:
    """Kill and restart the broker under two busy workers: they recover by themselves and the
    committed output holds every verdict once, as the reference has it."""
    broker = broker_factory()
    bootstrap = broker.start()
    topic, out = "faults.inputs", "faults.verdicts"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({t: {"num_partitions": PARTITIONS, "replication_factor": 1}
                             for t in (topic, out)}, wait_for_metadata=True)
    finally:
        admin.close()
    n = _produce(bootstrap, topic, _records(streams))
    workers = [spawn(bootstrap, topic, out, "faults", w) for w in ("a", "b")]
    reader = VerdictReader(bootstrap, out)
    try:
        _wait_for(reader, lambda: _workers_seen(reader) == {"a", "b"} and
                  len(reader.items) >= n // 5, _check_all(workers), "both workers at work")
    finally:
        reader.close()
    assert broker.kill()
    time.sleep(2.0)
    broker.start()
    reader = VerdictReader(bootstrap, out)
    try:
        verdicts = reader.read_until(n, timeout=150, check=_check_all(workers), settle=2.0)
    finally:
        reader.close()
    _assert_reference(verdicts, streams, reference)


def test_workers_added_and_removed_three_times(
    kafka_bootstrap: str, topic_factory, spawn, streams, reference
) -> None:
    """Three times a worker joins and an older one leaves (twice by SIGTERM, once by SIGKILL
    with no replacement) while the stream flows: same verdicts as one worker, exactly once."""
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    group = f"g-{uuid.uuid4().hex[:8]}"
    phases = 7  # {a} +b {a,b} -a {b} +c {b,c} -b {c} +d {c,d} -c {d}
    bounds = [round(PER_STREAM * k / phases) for k in range(phases + 1)]
    reader = VerdictReader(kafka_bootstrap, out)
    live = [spawn(kafka_bootstrap, topic, out, group, "a")]
    seen: list[str] = ["a"]
    produced = 0
    try:
        for phase in range(phases):
            before = produced
            produced += _produce(kafka_bootstrap, topic,
                                 _records(streams, slice(bounds[phase], bounds[phase + 1])))
            newest = live[-1].worker_id
            _wait_for(reader, lambda b=before, p=produced, w=newest:
                      len(reader.items) >= (b + p) // 2 and w in _workers_seen(reader),
                      _check_all(live), f"progress in phase {phase}")
            if phase == phases - 1:
                break
            if phase % 2 == 0:  # add a worker, wait until it owns partitions
                name = chr(ord("a") + len(seen))
                seen.append(name)
                live.append(spawn(kafka_bootstrap, topic, out, group, name))
                live[-1].wait_restored()
            else:  # remove the older worker
                gone = live.pop(0)
                if phase == 3:
                    gone.kill()
                else:
                    gone.terminate()
        verdicts = reader.read_until(produced, timeout=180, check=_check_all(live), settle=2.0)
    finally:
        reader.close()
    assert produced == STREAMS * PER_STREAM
    assert {v["worker"] for v in verdicts} == set(seen)
    _assert_reference(verdicts, streams, reference)
