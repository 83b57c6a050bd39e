"""The worker's Kafka client settings (--kafka-config JSON + RADIUSGUARD_KAFKA_* env) reach every
client it builds: `radiusguard serve` works against an SSL listener of a real local broker whose
self-signed certificate it trusts through ssl_cafile, and refuses to run, naming the failed TLS
handshake, when it trusts another certificate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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

STORE_PASSWORD = "radiusguard-tls"  # the keystore's and the key's (PKCS12 uses one for both)


@dataclass(frozen=True)
class TlsBroker:
    """A private broker's SSL listener and the PEM certificate that clients trust."""

    bootstrap: str
    cafile: Path


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh PKCS12 keystore with a self-signed certificate for 127.0.0.1 and localhost, and
    that certificate as PEM (what a client trusts); keytool ships with the broker's Java."""
    keytool = shutil.which("keytool")
    assert keytool, "keytool (Java 17) is not on PATH"
    store, pem = directory / f"{name}.p12", directory / f"{name}.pem"
    common = ["-alias", "broker", "-keystore", str(store), "-storetype", "PKCS12",
              "-storepass", STORE_PASSWORD]
    subprocess.run([keytool, "-genkeypair", *common, "-keypass", STORE_PASSWORD,
                    "-keyalg", "RSA", "-keysize", "2048", "-validity", "2", "-dname",
                    "CN=localhost", "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-noprompt"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([keytool, "-exportcert", "-rfc", *common, "-file", str(pem)],
                   check=True, capture_output=True, timeout=120)
    assert pem.read_text().startswith("-----BEGIN CERTIFICATE-----")
    return store, pem


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A private broker with an extra SSL client listener (a self-signed certificate).

    The PLAINTEXT listener stays on ``port`` because worker.local.broker's readiness probe connects
    without TLS; the controller listener stays PLAINTEXT too.
    """
    directory = tmp_path_factory.mktemp("tls")
    store, pem = _self_signed(directory, "broker")
    port, ssl_port, controller = broker.free_port(), broker.free_port(), broker.free_port()
    host = "127.0.0.1"
    extra = {
        "listeners": (f"PLAINTEXT://{host}:{port},SSL://{host}:{ssl_port},"
                      f"CONTROLLER://{host}:{controller}"),
        "advertised.listeners": f"PLAINTEXT://{host}:{port},SSL://{host}:{ssl_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(store),
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
    }
    local = LocalBroker(directory / "broker", port=port, controller_port=controller,
                        extra_properties=extra)
    local.start()
    try:
        yield TlsBroker(f"{host}:{ssl_port}", pem)
    finally:
        local.stop()


def _settings(tmp_path: Path, cafile: Path) -> tuple[Path, dict[str, str], dict]:
    """A --kafka-config file (protocol, a placeholder CA) and env (the CA file, which wins over
    the file's, and hostname checking); returns (file, env, the parsed settings)."""
    path = tmp_path / "kafka.json"
    path.write_text(json.dumps({"security_protocol": "SSL",
                                "ssl_cafile": "overridden-by-env.pem"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADIUSGUARD_KAFKA_")}
    env["RADIUSGUARD_KAFKA_SSL_CAFILE"] = str(cafile)
    env["RADIUSGUARD_KAFKA_SSL_CHECK_HOSTNAME"] = "true"  # parsed as JSON: a bool
    settings = kafka_settings(str(path), environ=env)
    assert settings == {"security_protocol": "SSL", "ssl_cafile": str(cafile),
                        "ssl_check_hostname": True}
    return path, env, settings


def test_serve_over_tls_gives_one_verdict_per_input(
    tls_broker: TlsBroker, streams: list[Stream], tmp_path: Path  # noqa: F811  (the fixture)
) -> None:
    config, env, settings = _settings(tmp_path, tls_broker.cafile)
    verdicts, proc, log = serve_inputs(tls_broker.bootstrap, settings, config, env, streams,
                                       tmp_path)
    _assert_exactly_once(verdicts, streams, n=PER_STREAM)
    assert proc.returncode == 0, log.read_text()


def test_serve_trusting_another_certificate_exits_with_one_line_error(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    _, wrong_ca = _self_signed(tmp_path, "other")
    config, env, settings = _settings(tmp_path, wrong_ca)
    with pytest.raises(KafkaError):  # the client verifies the broker's certificate at all
        KafkaAdminClient(bootstrap_servers=tls_broker.bootstrap, bootstrap_timeout_ms=3000,
                         **client_settings(KafkaAdminClient, settings)).close()
    text, error = serve_refused(tls_broker.bootstrap, config, env, tmp_path,
                                "trusting another certificate")
    # It names the failed handshake and the setting to check.
    assert error == (
        f"radiusguard serve: error: TLS handshake with {tls_broker.bootstrap} failed: "
        "certificate verify failed: self-signed certificate (check ssl_cafile)"
    ), text
