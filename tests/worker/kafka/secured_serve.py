"""`radiusguard serve` behind a secured listener, for the SASL and TLS tests: an input topic
with 20 inputs, the worker as a subprocess, its verdicts read back, or its refusal checked."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from tests.worker.kafka.test_service import FNN, ROOT, Stream, _records
from worker.formats.codec import decode_verdict
from worker.kafka.config import client_settings

PROFILE = ROOT / "models" / "fnn-3x30-relu.profile.json"
PER_STREAM = 5  # 4 streams x 5 = 20 inputs
ERROR_PREFIX = "radiusguard serve: error:"


def serve(bootstrap: str, config: Path, env: dict[str, str], topic: str, out: str,
          log: Path) -> subprocess.Popen:
    """Start one worker with the --kafka-config file and env; its output goes to `log`."""
    exe = Path(sys.executable).with_name("radiusguard")
    cmd = [str(exe), "serve", "--bootstrap", bootstrap, "--kafka-config", str(config),
           "--model", str(FNN), "--profile", str(PROFILE), "--input-topic", topic,
           "--output-topic", out, "--group", f"g-{uuid.uuid4().hex[:8]}", "--max-batch", "4",
           "--jobs", "1"]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the worker has not left within a minute."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def serve_inputs(bootstrap: str, settings: dict, config: Path, env: dict[str, str],
                 streams: list[Stream], tmp_path: Path) -> tuple[list[dict], subprocess.Popen, Path]:
    """Produce PER_STREAM inputs of each stream to a new topic with the client `settings`, serve
    them with one worker, and read its verdicts; returns (verdicts, the stopped worker, its log)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap,
                             **client_settings(KafkaAdminClient, settings))
    topic, out = f"in-{uuid.uuid4().hex[:8]}", f"verdicts-{uuid.uuid4().hex[:8]}"
    try:
        admin.create_topics({topic: {"num_partitions": 4, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                             **client_settings(KafkaProducer, settings))
    items = list(_records(streams, slice(0, PER_STREAM)))
    for key, value in items:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    assert len(items) == 20

    log = tmp_path / "serve.log"
    proc = serve(bootstrap, config, env, topic, out, log)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             **client_settings(KafkaConsumer, settings))
    try:
        verdicts = _collect(proc, log, consumer, out, len(items))
    finally:
        consumer.close()
        stop(proc)
    return verdicts, proc, log


def _collect(proc: subprocess.Popen, log: Path, consumer: KafkaConsumer, out: str, n: int,
             timeout: float = 120) -> list[dict]:
    """Read the output topic from its beginning until n verdicts (and briefly after, to catch
    duplicates), failing if the worker exits meanwhile."""
    verdicts: list[dict] = []
    deadline = time.monotonic() + timeout
    parts = None
    while not parts:  # the worker creates the output topic
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no output topic"
        parts = consumer.partitions_for_topic(out)
        if not parts:
            consumer.topics()  # refresh metadata
            time.sleep(0.2)
    tps = [TopicPartition(out, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    while len(verdicts) < n:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{len(verdicts)} of {n} verdicts"
        for msgs in consumer.poll(timeout_ms=300).values():
            verdicts += [decode_verdict(m.value) for m in msgs]
    settle = time.monotonic() + 1.5
    while time.monotonic() < settle:
        for msgs in consumer.poll(timeout_ms=300).values():
            verdicts += [decode_verdict(m.value) for m in msgs]
    return verdicts


def serve_refused(bootstrap: str, config: Path, env: dict[str, str], tmp_path: Path,
                  what: str) -> tuple[str, str]:
    """Run a worker that cannot connect: it must exit 2 within 90 s, with no traceback and its
    own error as one line, the last (kafka-python's retry log lines precede it); returns
    (the whole log, that line)."""
    topic = f"in-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    proc = serve(bootstrap, config, env, topic, f"{topic}.out", log)
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"serve {what} still running after 90 s:\n{log.read_text()}")
    elapsed = time.monotonic() - t0
    text = log.read_text()
    lines = text.strip().splitlines()
    assert rc == 2, text
    assert "Traceback" not in text, text
    assert elapsed < 90
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert errors == [lines[-1]], text
    return text, errors[0]
