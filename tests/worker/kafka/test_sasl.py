"""The worker's Kafka client settings (--kafka-config JSON + RADIUSGUARD_KAFKA_* env) reach every
client it builds: `radiusguard serve` works against a SASL_PLAINTEXT (PLAIN) listener of a real
local broker and refuses to run with a wrong password, naming the failed login."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from tests.kafka_fixtures import LocalBroker
from tests.worker.kafka.secured_serve import PER_STREAM, serve_inputs, serve_refused
from tests.worker.kafka.test_service import (  # noqa: F401  (streams is a fixture)
    Stream,
    _assert_exactly_once,
    streams,
)
from worker.kafka.config import client_settings, kafka_settings
from worker.local import broker

pytestmark = [pytest.mark.kafka, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

USER, PASSWORD = "admin", "admin-secret"
JAAS = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
        f'username="{USER}" password="{PASSWORD}" user_{USER}="{PASSWORD}";')


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private broker with an extra SASL_PLAINTEXT/PLAIN client listener; its bootstrap.

    The PLAINTEXT listener stays on ``port`` because worker.local.broker's readiness probe connects
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


def test_serve_over_sasl_plain_gives_one_verdict_per_input(
    sasl_bootstrap: str, streams: list[Stream], tmp_path: Path  # noqa: F811  (the fixture)
) -> None:
    config, env, settings = _settings(tmp_path, PASSWORD)
    verdicts, proc, log = serve_inputs(sasl_bootstrap, settings, config, env, streams, tmp_path)
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
    text, error = serve_refused(sasl_bootstrap, config, env, tmp_path, "with a wrong password")
    assert "wrong-password" not in text
    # It names the failed login, the user and the settings to check.
    assert error.startswith(
        f"radiusguard serve: error: authentication failed for SASL user {USER!r} (PLAIN) on "
        f"{sasl_bootstrap}"
    ), text
    assert "check sasl_plain_username/sasl_plain_password" in error, text
