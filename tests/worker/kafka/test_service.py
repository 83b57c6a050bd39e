"""The worker against a real broker: verdicts equal the offline validator's, exactly once per
input with several workers, rebalances and SIGTERM; dead letters; refusals to start."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from verifier.decide import decide_many
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from worker.calibrate import calibrate
from worker.cli import main
from worker.formats.codec import decode_verdict, encode_input, encode_verdict
from worker.formats.windows import encode_window
from worker.kafka.config import ConfigError, ServiceConfig
from worker.kafka.service import Service, WindowRestorer
from worker.policy import make_validator
from worker.processor import certificate_of
from worker.profile import Profile, save_profile

pytestmark = [pytest.mark.kafka, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

ROOT = Path(__file__).resolve().parents[3]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
UINT8 = "uint8/255"  # the preprocessing the certificates of uint8 records name
MNIST = ROOT / "models" / "mnist_test_1000.npz"
PARTITIONS = 4
PER_STREAM = 60


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Stream:
    """One stream's inputs (uint8 images) in produce order."""

    name: str
    ids: tuple[str, ...]
    xs: np.ndarray


def _streams_on_distinct_partitions(n: int) -> list[str]:
    """Stream names whose keys land on n different partitions (the default partitioner)."""
    names, seen = [], set()
    for i in range(1000):
        name = f"cam-{i}"
        p = (murmur2(name.encode()) & 0x7FFFFFFF) % PARTITIONS
        if p not in seen:
            seen.add(p)
            names.append(name)
        if len(names) == n:
            return names
    raise AssertionError("no stream names found")


@pytest.fixture(scope="module")
def streams() -> list[Stream]:
    """Four streams, one per partition: MNIST digits with a few noise images mixed in."""
    data = np.load(MNIST)
    rng = np.random.default_rng(7)
    out = []
    for k, name in enumerate(_streams_on_distinct_partitions(4)):
        digits = data["x"][100 + k * 50 : 150 + k * 50]
        noise = rng.integers(0, 256, size=(PER_STREAM - len(digits), 28, 28), dtype=np.uint8)
        xs = np.concatenate([digits, noise])[rng.permutation(PER_STREAM)]
        out.append(Stream(name, tuple(f"{name}-{i}" for i in range(PER_STREAM)), xs))
    return out


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Profile]:
    """An FNN profile from a few dozen images (window 20): quick to fit, real parameters."""
    data = np.load(MNIST)
    prof = calibrate(load_onnx(FNN), data["x"][:60], data["y"][:60], max_false_alarm=0.03,
                     window_size=20, jobs=2, policy="distribution")
    path = tmp_path_factory.mktemp("profile") / "fnn.profile.json"
    save_profile(prof, path)
    return path, prof


Key = tuple[str, str, float | None, str, object, str]


def _key(v: dict) -> Key:
    """What determinism covers: id, verdict, radius, rule, p-value (NaN compared as a label)
    and the certificate, every field (JSON with sorted keys)."""
    p = v.get("pvalue")
    return (v["id"], v["verdict"], v["radius"], v["rule"],
            "nan" if isinstance(p, float) and math.isnan(p) else p,
            json.dumps(v.get("certificate"), sort_keys=True))


@pytest.fixture(scope="module")
def reference(streams: list[Stream], profile: tuple[Path, Profile]) -> dict[str, dict]:
    """Per policy and stream: the verdict sequence from score_many and the validators."""
    prof = profile[1]
    v = prof.verifier
    net = load_onnx(FNN)
    out: dict[str, dict] = {}
    for policy in ("threshold", "distribution"):
        per_stream = {}
        for s in streams:
            xs = s.xs.reshape(len(s.xs), -1) / 255.0
            if policy == "threshold":  # decided at the budget, no radius
                budget = make_validator(prof, policy).budget
                per_stream[s.name] = [
                    _key({"id": rid, "verdict": "accept" if p.proved else "reject",
                          "radius": None, "rule": "threshold", "pvalue": None,
                          "certificate": certificate_of(p, v, net.sha256, UINT8)})
                    for rid, p in zip(s.ids, decide_many(net, xs, budget, v, jobs=2),
                                      strict=True)]
                continue
            radii = score_many(net, xs, v, jobs=2)
            validator = make_validator(prof, policy).rule
            state = prof.initial_state() if policy == "distribution" else None
            seq = []
            for rid, res in zip(s.ids, radii, strict=True):
                decision, state = validator.step(state, res.radius)
                seq.append(_key({"id": rid, "verdict": decision.verdict, "radius": res.radius,
                                 "rule": decision.rule, "pvalue": decision.pvalue,
                                 "certificate": certificate_of(res, v, net.sha256, UINT8)}))
            per_stream[s.name] = seq
        out[policy] = per_stream
    return out


def _records(streams: list[Stream], part: slice = slice(None)) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the streams' inputs, interleaved round robin, restricted to `part`."""
    for i in range(PER_STREAM)[part]:
        for s in streams:
            yield encode_input(s.ids[i], s.xs[i], stream=s.name, dtype="uint8", label=None)


def _produce(bootstrap: str, topic: str, items) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    for key, value in items:
        producer.send(topic, key=key, value=value)
        n += 1
    producer.flush()
    producer.close()
    return n


# ------------------------------------------------------------------------------ helpers


class VerdictReader:
    """Reads a verdict topic from its beginning with read_committed, incrementally."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      isolation_level="read_committed",
                                      enable_auto_commit=False)
        deadline = time.monotonic() + 30
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = self.consumer.partitions_for_topic(topic)
            time.sleep(0.1 if not parts else 0)
        assert parts, f"no topic {topic}"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.items: list[tuple[bytes | None, dict]] = []

    def read_until(self, n: int, timeout: float = 90, check: Callable[[], None] | None = None,
                   settle: float = 0.0) -> list[dict]:
        """Poll until n verdicts arrived (then `settle` more seconds to catch extras)."""
        deadline = time.monotonic() + timeout
        while len(self.items) < n:
            assert time.monotonic() < deadline, f"only {len(self.items)} of {n} verdicts"
            if check is not None:
                check()
            self._poll(200)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            self._poll(200)
        return [v for _, v in self.items]

    def _poll(self, ms: int) -> None:
        for msgs in self.consumer.poll(timeout_ms=ms).values():
            self.items += [(m.key, decode_verdict(m.value)) for m in msgs]

    def close(self) -> None:
        self.consumer.close()


class ServiceThread:
    """A Service running in a thread; errors from run() are re-raised by stop()."""

    def __init__(self, cfg: ServiceConfig):
        self.service = Service(cfg)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"svc-{cfg.worker_id}")

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:  # re-raised in the test thread
            self.error = exc

    def start(self) -> ServiceThread:
        self.thread.start()
        return self

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (self.service.metrics.ready and self.service.assignment):
            self.check()
            assert time.monotonic() < deadline, "worker not ready"
            time.sleep(0.05)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "worker did not stop"
        self.check()


@contextmanager
def running(*cfgs: ServiceConfig) -> Iterator[list[ServiceThread]]:
    threads = [ServiceThread(cfg).start() for cfg in cfgs]
    try:
        yield threads
    finally:
        errors = []
        for t in threads:
            try:
                t.stop()
            except BaseException as exc:  # stop them all, then report
                errors.append(exc)
        if errors:
            raise errors[0]


def _config(bootstrap: str, profile_path: Path, topic: str, out: str, **kw) -> ServiceConfig:
    settings = {"policy": "distribution", "group": f"g-{uuid.uuid4().hex[:8]}", "jobs": 1,
                "max_batch": 16, "worker_id": f"w-{uuid.uuid4().hex[:6]}"}
    settings.update(kw)
    return ServiceConfig(bootstrap=bootstrap, model=FNN, profile=profile_path, input_topic=topic,
                         output_topic=out, **settings)


def _read_all(bootstrap: str, topic: str, n: int, timeout: float = 30) -> list:
    """The first n committed records of a topic (raw ConsumerRecords), plus any extras."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < n:
            for msgs in consumer.poll(timeout_ms=300).values():
                out += msgs
        for msgs in consumer.poll(timeout_ms=1000).values():
            out += msgs
        return out
    finally:
        consumer.close()


def _by_stream(verdicts: list[dict]) -> dict[str, list[Key]]:
    out: dict[str, list[Key]] = defaultdict(list)
    for v in verdicts:
        out[v["stream"]].append(_key(v))
    return dict(out)


def _assert_exactly_once(verdicts: list[dict], streams: list[Stream], n: int = PER_STREAM):
    counts = Counter(v["id"] for v in verdicts)
    expected = {rid for s in streams for rid in s.ids[:n]}
    assert set(counts) == expected
    assert [k for k, c in counts.items() if c != 1] == []


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("policy", ["threshold", "distribution"])
def test_verdicts_equal_offline_validation(
    kafka_bootstrap: str, topic_factory, streams, profile, reference, policy: str
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    n = _produce(kafka_bootstrap, topic, _records(streams))
    cfg = _config(kafka_bootstrap, profile[0], topic, out, policy=policy, jobs=2,
                  metrics_port=0)
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        with running(cfg) as (worker,):
            verdicts = reader.read_until(n, check=worker.check, settle=1.0)
            port = worker.service.metrics_port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                assert r.status == 200
    finally:
        reader.close()
    _assert_exactly_once(verdicts, streams)
    assert _by_stream(verdicts) == reference[policy]
    assert all(key == v["stream"].encode() for key, v in reader.items)  # key = stream id
    assert 'radiusguard_inputs_total{verdict="accept"}' in text
    counts = Counter(v["verdict"] for v in verdicts)
    assert counts["accept"] and counts["reject"], counts  # both outcomes are exercised


def test_two_workers_one_group_exactly_once(
    kafka_bootstrap: str, topic_factory, streams, profile, reference
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    group = f"g-{uuid.uuid4().hex[:8]}"
    cfgs = [_config(kafka_bootstrap, profile[0], topic, out, group=group) for _ in range(2)]
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        with running(*cfgs) as workers:
            for w in workers:
                w.wait_ready()
            deadline = time.monotonic() + 60  # both members of one generation
            while len(workers[0].service.assignment) + len(workers[1].service.assignment) != 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            n = _produce(kafka_bootstrap, topic, _records(streams))
            verdicts = reader.read_until(n, check=lambda: [w.check() for w in workers],
                                         settle=1.5)
    finally:
        reader.close()
    _assert_exactly_once(verdicts, streams)
    assert len({v["worker"] for v in verdicts}) == 2
    assert _by_stream(verdicts) == reference["distribution"]


def test_worker_added_and_removed_mid_stream_changes_no_verdict(
    kafka_bootstrap: str, topic_factory, streams, profile, reference
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    group = f"g-{uuid.uuid4().hex[:8]}"
    a_cfg = _config(kafka_bootstrap, profile[0], topic, out, group=group, worker_id="a",
                    max_batch=8)
    b_cfg = replace(a_cfg, worker_id="b")
    third = PER_STREAM // 3
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        with running(a_cfg) as (a,):
            n1 = _produce(kafka_bootstrap, topic, _records(streams, slice(0, third)))
            reader.read_until(n1 // 2, check=a.check)
            b = ServiceThread(b_cfg).start()
            try:
                b.wait_ready()
                n2 = _produce(kafka_bootstrap, topic, _records(streams, slice(third, 2 * third)))
                deadline = time.monotonic() + 90
                while not any(v["worker"] == "b" for _, v in reader.items):
                    assert time.monotonic() < deadline, "worker b never got to work"
                    reader._poll(200)
                    a.check()
                    b.check()
            finally:
                b.stop()
            n3 = _produce(kafka_bootstrap, topic, _records(streams, slice(2 * third, None)))
            verdicts = reader.read_until(n1 + n2 + n3, check=a.check, settle=1.5)
    finally:
        reader.close()
    _assert_exactly_once(verdicts, streams)
    assert {v["worker"] for v in verdicts} == {"a", "b"}
    restores = a.service.metrics.registry.get_sample_value("radiusguard_state_restores_total")
    assert restores > PARTITIONS  # windows moved away and back
    assert _by_stream(verdicts) == reference["distribution"]


def test_rebalance_waits_for_the_commit_in_flight(
    kafka_bootstrap: str, topic_factory, streams, profile, reference
) -> None:
    """Commits slowed to 0.2 s: the next batch is scored while one commits, and a member joining
    and leaving revokes partitions with a commit in flight; no verdict changes."""
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    group = f"g-{uuid.uuid4().hex[:8]}"
    a_cfg = _config(kafka_bootstrap, profile[0], topic, out, group=group, worker_id="a",
                    max_batch=8)
    b_cfg = replace(a_cfg, worker_id="b")
    overlaps: list[str] = []

    def slowed(worker: ServiceThread) -> ServiceThread:
        service = worker.service
        committing = threading.Event()
        commit, score = service.transactions.write, service.processor.finish

        def slow_commit(batch, producer) -> None:
            committing.set()
            try:
                time.sleep(0.2)
                commit(batch, producer)
            finally:
                committing.clear()

        def watched_score(batch, states):
            if committing.is_set():
                overlaps.append(service.cfg.worker_id)
            return score(batch, states)

        service.transactions.write, service.processor.finish = slow_commit, watched_score
        return worker

    half = PER_STREAM // 2
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        a = slowed(ServiceThread(a_cfg)).start()
        try:
            n1 = _produce(kafka_bootstrap, topic, _records(streams, slice(0, half)))
            reader.read_until(n1 // 4, check=a.check)
            b = slowed(ServiceThread(b_cfg)).start()
            try:
                b.wait_ready()
                n2 = _produce(kafka_bootstrap, topic, _records(streams, slice(half, None)))
                deadline = time.monotonic() + 90
                while not any(v["worker"] == "b" for _, v in reader.items):
                    assert time.monotonic() < deadline, "worker b never got to work"
                    reader._poll(200)
                    a.check()
                    b.check()
            finally:
                b.stop()
            verdicts = reader.read_until(n1 + n2, check=a.check, timeout=180, settle=1.5)
        finally:
            a.stop()
    finally:
        reader.close()
    _assert_exactly_once(verdicts, streams)
    assert {v["worker"] for v in verdicts} == {"a", "b"}
    assert "a" in overlaps  # scoring went on while a commit was running
    assert _by_stream(verdicts) == reference["distribution"]


def test_malformed_records_become_invalid_verdicts_and_dead_letters(
    kafka_bootstrap: str, topic_factory, streams, profile, reference
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    s = streams[0]
    key = s.name.encode()
    x = s.xs[0]
    packed = msgpack.packb
    floats = x.astype(np.float64) / 255.0
    nan = floats.copy()
    nan[5] = np.nan
    high = floats.copy()
    high[3] = 1.5

    def raw(value: dict) -> bytes:
        return packed(value, use_bin_type=True)

    bad: dict[str, bytes | None] = {
        "not msgpack": b"\xc1\x00 definitely not msgpack",
        "not a map": packed([1, 2, 3]),
        "wrong shape": encode_input("bad-shape", np.zeros((27, 27)), stream=s.name)[1],
        "nan": raw({"id": "bad-nan", "x": {"dtype": "float64", "shape": [28, 28],
                                           "data": nan.tobytes()}}),
        "out of range": raw({"id": "bad-high", "x": {"dtype": "float64", "shape": [28, 28],
                                                     "data": high.tobytes()}}),
        "oversized": raw({"id": "bad-big", "x": {"dtype": "uint8", "shape": [28, 28],
                                                 "data": x.tobytes()}, "pad": b"\0" * 10000}),
        "missing id": raw({"x": {"dtype": "uint8", "shape": [28, 28], "data": x.tobytes()}}),
        "missing x": raw({"id": "bad-nox"}),
        "tombstone": None,
    }
    good = list(_records([s]))
    pending = list(bad.values())
    items: list[tuple[bytes, bytes | None]] = []
    for i, (k, v) in enumerate(good):  # a malformed record after every few good ones
        items.append((k, v))
        if i % 6 == 2 and pending:
            items.append((key, pending.pop(0)))
    assert not pending
    n = _produce(kafka_bootstrap, topic, items)
    cfg = _config(kafka_bootstrap, profile[0], topic, out, max_input_bytes=8192)
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        with running(cfg) as (worker,):
            verdicts = reader.read_until(n, check=worker.check, settle=1.0)
        letters = _read_all(kafka_bootstrap, cfg.dlq_topic, len(bad))
    finally:
        reader.close()
    assert len(verdicts) == n
    invalid = [v for v in verdicts if v["verdict"] == "invalid"]
    assert len(invalid) == len(bad)
    assert all(v["rule"] == "decode" and v["reason"] for v in invalid)
    assert sorted((m.value for m in letters), key=repr) == sorted(bad.values(), key=repr)
    for m in letters:
        headers = dict(m.headers)
        assert headers["error"] and headers["source"].startswith(topic.encode())
        assert m.key == key
    reasons = " | ".join(v["reason"] for v in invalid)
    for word in ("msgpack", "map", "elements", "finite", "exceeds", "'id'", "'x'", "empty"):
        assert word in reasons, word
    valid = [v for v in verdicts if v["verdict"] != "invalid"]  # the worker kept going
    assert _by_stream(valid) == {s.name: reference["distribution"][s.name]}


def test_aborted_transaction_is_redone_exactly_once(
    kafka_bootstrap: str, topic_factory, streams, profile, reference
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    n = _produce(kafka_bootstrap, topic, _records(streams))
    cfg = _config(kafka_bootstrap, profile[0], topic, out, max_batch=8)
    worker = ServiceThread(cfg)
    service = worker.service
    original = service.transactions.write
    calls: list[int] = []
    score = service.processor.finish
    scored = threading.Semaphore(0)

    def counting(batch, states):
        scored.release()
        return score(batch, states)

    def flaky(batch, producer) -> None:
        """The third transaction writes its verdicts and windows, then fails before committing,
        once four more batches were validated on the windows it left."""
        calls.append(len(batch.records))
        if len(calls) != 3:
            return original(batch, producer)
        for _ in range(4):
            assert scored.acquire(timeout=30)
        producer.begin_transaction()
        for key, verdict in batch.result.verdicts:
            producer.send(cfg.output_topic, key=key, value=encode_verdict(verdict))
        for (partition, stream), state in batch.result.states.items():
            poisoned = replace(state, radii=tuple(0.0 for _ in state.radii))
            producer.send(cfg.changelog_topic, key=stream.encode(), value=encode_window(poisoned),
                          partition=partition)
        producer.flush()
        raise KafkaError("injected failure before the commit")

    service.transactions.write = flaky
    service.processor.finish = counting
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        worker.start()
        try:
            verdicts = reader.read_until(n, check=worker.check, settle=1.5)
        finally:
            worker.stop()
    finally:
        reader.close()
    assert service.metrics.registry.get_sample_value("radiusguard_transaction_aborts_total") == 1
    _assert_exactly_once(verdicts, streams)
    assert _by_stream(verdicts) == reference["distribution"]


def test_restore_waits_for_an_open_transaction(
    kafka_bootstrap: str, topic_factory, profile
) -> None:
    topic = topic_factory(2, "in")
    cfg = _config(kafka_bootstrap, profile[0], topic, f"{topic}.out")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics({cfg.changelog_topic: {"num_partitions": 2, "replication_factor": 1,
                                               "configs": {"cleanup.policy": "compact"}}},
                        wait_for_metadata=True)
    admin.close()
    old = profile[1].initial_state()
    new = replace(old, count=7, last_offset=41)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap,
                             transactional_id=f"t-{uuid.uuid4().hex[:8]}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(cfg.changelog_topic, key=b"cam", value=encode_window(old), partition=1)
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(cfg.changelog_topic, key=b"cam", value=encode_window(new), partition=1)
    producer.flush()  # written, not committed: the new owner must wait for the outcome
    timer = threading.Timer(1.5, producer.commit_transaction)
    restorer = WindowRestorer(cfg)
    try:
        timer.start()
        t0 = time.monotonic()
        states = restorer.restore([0, 1])
        waited = time.monotonic() - t0
    finally:
        timer.join()
        restorer.close()
        producer.close()
    assert states == {(1, "cam"): new}
    assert waited > 0.5


def test_sigterm_mid_stream_loses_nothing(
    kafka_bootstrap: str, topic_factory, streams, profile, reference, tmp_path: Path
) -> None:
    topic, out = topic_factory(PARTITIONS, "in"), topic_factory(PARTITIONS, "verdicts")
    n = _produce(kafka_bootstrap, topic, _records(streams))
    group = f"g-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "worker.cli", "serve", "--bootstrap", kafka_bootstrap,
           "--model", str(FNN), "--profile", str(profile[0]), "--input-topic", topic,
           "--output-topic", out, "--group", group, "--max-batch", "4", "--jobs", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = VerdictReader(kafka_bootstrap, out)
    try:
        logs = []
        for run in range(2):
            log = tmp_path / f"worker-{run}.log"
            logs.append(log)
            with open(log, "wb") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                        cwd=ROOT)
            try:
                def alive(proc=proc, log=log) -> None:
                    assert proc.poll() is None, log.read_text()

                if run == 0:
                    reader.read_until(n // 5, timeout=120, check=alive)
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(timeout=60) == 0, log.read_text()
                    stopped_at = len(reader.read_until(0, settle=1.0))
                    assert stopped_at < n, "the first worker finished before SIGTERM"
                else:
                    verdicts = reader.read_until(n, timeout=120, check=alive, settle=1.5)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
    finally:
        reader.close()
    assert '"stopping"' in logs[0].read_text()
    _assert_exactly_once(verdicts, streams)
    assert _by_stream(verdicts) == reference["distribution"]


def test_refuses_missing_input_topic_and_wrong_model(
    kafka_bootstrap: str, profile, capsys: pytest.CaptureFixture
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    cfg = ServiceConfig(bootstrap=kafka_bootstrap, model=FNN, profile=profile[0],
                        input_topic=missing, output_topic=f"{missing}.out", jobs=1)
    with pytest.raises(ConfigError, match="does not exist"):
        Service(cfg).run()
    rc = main(["serve", "--bootstrap", kafka_bootstrap, "--model", str(FNN), "--profile",
               str(profile[0]), "--input-topic", missing, "--jobs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("radiusguard serve: error: input topic") and "create it" in err[-1]
    tanh = ROOT / "models" / "fnn-3x30-tanh.onnx"
    rc = main(["serve", "--bootstrap", kafka_bootstrap, "--model", str(tanh), "--profile",
               str(profile[0]), "--input-topic", missing, "--jobs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "was calibrated for model sha256" in err[0]
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert missing not in consumer.topics()  # refusing did not create it
    finally:
        consumer.close()
