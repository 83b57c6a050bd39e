"""The worker's configuration: one frozen object, with Kafka client settings passed through."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


SECRET_KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `radiusguard serve` needs; kafka holds extra kafka-python client settings."""

    bootstrap: str
    model: Path
    profile: Path
    policy: str = "distribution"
    input_topic: str = "radiusguard.inputs"
    output_topic: str = "radiusguard.verdicts"
    group: str = "radiusguard"
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_batch: int = 32
    poll_timeout_ms: int = 500
    jobs: int = os.cpu_count() or 1
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    transaction_timeout_ms: int = 10000
    kafka: dict = field(default_factory=dict)

    @property
    def dlq_topic(self) -> str:
        return f"{self.input_topic}.dlq"

    @property
    def changelog_topic(self) -> str:
        return f"{self.input_topic}.{self.group}.windows"

    @property
    def transactional_id(self) -> str:
        return f"radiusguard-{self.group}-{self.worker_id}"

    def redacted_kafka(self) -> dict:
        """Kafka settings safe to log."""
        return {k: ("***" if k in SECRET_KEYS else v) for k, v in self.kafka.items()}


def kafka_settings(path: str | None, environ: dict[str, str] | None = None) -> dict:
    """kafka-python settings from a JSON file and RADIUSGUARD_KAFKA_* variables (env wins).

    RADIUSGUARD_KAFKA_SECURITY_PROTOCOL=SASL_SSL becomes security_protocol="SASL_SSL";
    numbers and booleans in the environment are parsed as JSON when they parse.
    """
    settings: dict = {}
    if path:
        try:
            settings.update(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise ConfigError(f"kafka config file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"kafka config file {path} is not valid JSON: {exc}") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"kafka config file {path} must hold a JSON object")
    env = os.environ if environ is None else environ
    for name, raw in env.items():
        if name.startswith("RADIUSGUARD_KAFKA_"):
            key = name[len("RADIUSGUARD_KAFKA_"):].lower()
            try:
                settings[key] = json.loads(raw)
            except json.JSONDecodeError:
                settings[key] = raw
    return settings
