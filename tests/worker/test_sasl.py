"""The worker's Kafka client settings (--kafka-config JSON + RADIUSGUARD_KAFKA_* env) reach every
client it builds: `radiusguard serve` works against a SASL_PLAINTEXT (PLAIN) listener of a real
local broker and refuses to run with a wrong password, naming the failed login."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from tests.kafka_fixtures import LocalBroker
from tests.worker.test_service_kafka import (  # noqa: F401  (streams is a fixture)
    FNN,
    ROOT,
    Stream,
    _assert_exactly_once,
    _records,
    streams,
)
from worker import broker
from worker.codec import decode_verdict
from worker.config import client_settings, kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

PROFILE = ROOT / "models" / "fnn-3x30-relu.profile.json"
PER_STREAM = 5  # 4 streams x 5 = 20 inputs
USER, PASSWORD = "admin", "admin-secret"
JAAS = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
        f'username="{USER}" password="{PASSWORD}" user_{USER}="{PASSWORD}";')


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private broker with an extra SASL_PLAINTEXT/PLAIN client listener; its bootstrap.

    The PLAINTEXT listener stays on ``port`` because worker.broker's readiness probe connects
    without credentials; the controller listener stays PLAINTEXT too.
    """
    port, sasl_port, controller = broker.free_port(), broker.free_port(), broker.free_port()
    host = "127.0.0.1"
    extra = {
        "listeners": (f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl_port},"
                      f"CONTROLLER://{host}:{controller}"),
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SASL_PLAINTEXT://{host}:{sasl_port}",
        "listener.security.protocol.map": ("PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
                                           "CONTROLLER:PLAINTEXT"),
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": JAAS,
    }
    local = LocalBroker(tmp_path_factory.mktemp("sasl") / "broker", port=port,
                        controller_port=controller, extra_properties=extra)
    local.start()
    try:
        yield f"{host}:{sasl_port}"
    finally:
        local.stop()


def _settings(tmp_path: Path, password: str) -> tuple[Path, dict[str, str], dict]:
    """A --kafka-config file (protocol, mechanism, user) and env (the password, which wins over
    the file's); returns (file, env, the parsed settings)."""
    path = tmp_path / "kafka.json"
    path.write_text(json.dumps({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                "sasl_plain_username": USER,
                                "sasl_plain_password": "overridden-by-env"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADIUSGUARD_KAFKA_")}
    env["RADIUSGUARD_KAFKA_SASL_PLAIN_PASSWORD"] = password
    env["RADIUSGUARD_KAFKA_REQUEST_TIMEOUT_MS"] = "20000"  # parsed as JSON: an int
    settings = kafka_settings(str(path), environ=env)
    assert settings["sasl_plain_password"] == password
    assert settings["request_timeout_ms"] == 20000
    return path, env, settings


def _serve(bootstrap: str, config: Path, env: dict[str, str], topic: str, out: str,
           log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("radiusguard")
    cmd = [str(exe), "serve", "--bootstrap", bootstrap, "--kafka-config", str(config),
           "--model", str(FNN), "--profile", str(PROFILE), "--input-topic", topic,
           "--output-topic", out, "--group", f"g-{uuid.uuid4().hex[:8]}", "--max-batch", "4",
           "--jobs", "1"]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_over_sasl_plain_gives_one_verdict_per_input(
    sasl_bootstrap: str, streams: list[Stream], tmp_path: Path  # noqa: F811  (the fixture)
) -> None:
    config, env, settings = _settings(tmp_path, PASSWORD)
    admin = KafkaAdminClient(bootstrap_servers=sasl_bootstrap,
                             **client_settings(KafkaAdminClient, settings))
    topic, out = f"in-{uuid.uuid4().hex[:8]}", f"verdicts-{uuid.uuid4().hex[:8]}"
    try:
        admin.create_topics({topic: {"num_partitions": 4, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=sasl_bootstrap, acks="all",
                             **client_settings(KafkaProducer, settings))
    items = list(_records(streams, slice(0, PER_STREAM)))
    for key, value in items:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    assert len(items) == 20

    log = tmp_path / "serve.log"
    proc = _serve(sasl_bootstrap, config, env, topic, out, log)
    consumer = KafkaConsumer(bootstrap_servers=sasl_bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             **client_settings(KafkaConsumer, settings))
    verdicts: list[dict] = []
    try:
        deadline = time.monotonic() + 120
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
        while len(verdicts) < len(items):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{len(verdicts)} of {len(items)} verdicts"
            for msgs in consumer.poll(timeout_ms=300).values():
                verdicts += [decode_verdict(m.value) for m in msgs]
        settle = time.monotonic() + 1.5  # catch duplicates
        while time.monotonic() < settle:
            for msgs in consumer.poll(timeout_ms=300).values():
                verdicts += [decode_verdict(m.value) for m in msgs]
    finally:
        consumer.close()
        _stop(proc)
    _assert_exactly_once(verdicts, streams, n=PER_STREAM)
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    assert "admin-secret" not in text  # the password is not logged


def test_serve_with_wrong_password_exits_with_one_line_error(
    sasl_bootstrap: str, tmp_path: Path
) -> None:
    config, env, settings = _settings(tmp_path, "wrong-password")
    with pytest.raises(KafkaError):  # the broker enforces the credentials at all
        KafkaAdminClient(bootstrap_servers=sasl_bootstrap, bootstrap_timeout_ms=10000,
                         **client_settings(KafkaAdminClient, settings)).close()
    topic = f"in-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "serve.log"
    t0 = time.monotonic()
    proc = _serve(sasl_bootstrap, config, env, topic, f"{topic}.out", log)
    try:
        rc = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"serve with a wrong password still running after 90 s:\n{log.read_text()}")
    elapsed = time.monotonic() - t0
    text = log.read_text()
    lines = text.strip().splitlines()
    assert rc == 2, text
    assert "Traceback" not in text, text
    assert elapsed < 90
    assert "wrong-password" not in text
    # The worker's own error is one line, and the last (kafka-python's retry log lines precede
    # it, ~50 of them); it names the failed login, the user and the settings to check.
    errors = [line for line in lines if line.startswith("radiusguard serve: error:")]
    assert errors == [lines[-1]], text
    assert errors[0].startswith(
        f"radiusguard serve: error: authentication failed for SASL user {USER!r} (PLAIN) on "
        f"{sasl_bootstrap}"
    ), text
    assert "check sasl_plain_username/sasl_plain_password" in errors[0], text
