"""The worker's configuration: one frozen object, with Kafka client settings passed through."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from worker.policy import POLICIES


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


SECRET_KEYS = ("sasl_plain_password", "ssl_password", "sasl_oauth_token_provider")
SECRET_WORDS = ("password", "secret", "token")




@dataclass(frozen=True)
class ServiceConfig:
    """Everything `radiusguard serve` needs; kafka holds extra kafka-python client settings.

    max_batch bounds the records scored together (one poll); a transaction commits the batches
    scored since the previous one, and starts at most once per commit_interval_ms. policy None
    means the profile's own policy. Derived topics: `<input>.dlq` for dead letters and
    `<input>.<group>.windows` for the compacted window changelog.
    """

    bootstrap: str
    model: Path
    profile: Path
    policy: str | None = None
    input_topic: str = "radiusguard.inputs"
    output_topic: str = "radiusguard.verdicts"
    group: str = "radiusguard"
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_batch: int = 32
    commit_interval_ms: int = 20
    poll_timeout_ms: int = 500
    jobs: int = os.cpu_count() or 1
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    transaction_timeout_ms: int = 10000
    max_input_bytes: int = 1 << 20
    max_dead_letter_bytes: int = 3 << 20
    restore_timeout_s: float = 120.0
    kafka: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "profile", Path(self.profile))
        if not self.bootstrap or not isinstance(self.bootstrap, str):
            raise ConfigError("bootstrap servers (host:port[,...]) are required")
        if self.policy is not None and self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {tuple(POLICIES)}, got {self.policy!r}")
        for name in ("input_topic", "output_topic", "group", "worker_id"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must not be empty")
        if self.input_topic == self.output_topic:
            raise ConfigError("the input and output topics must differ")
        for name in ("max_batch", "commit_interval_ms", "jobs", "poll_timeout_ms",
                     "transaction_timeout_ms",
                     "max_input_bytes", "max_dead_letter_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        owned = {"bootstrap_servers", "group_id", "client_id", "transactional_id",
                 "transaction_timeout_ms", "enable_auto_commit", "isolation_level",
                 "auto_offset_reset", "max_poll_records"}
        clash = sorted(owned & set(self.kafka))
        if clash:
            raise ConfigError(
                f"kafka settings {clash} are set by the worker itself; use its own options "
                "(--bootstrap, --group, --worker-id, --max-batch) instead"
            )
        if not self.restore_timeout_s > 0:
            raise ConfigError(f"restore_timeout_s must be positive, got {self.restore_timeout_s}")

    @property
    def dlq_topic(self) -> str:
        """Dead letters: undecodable input records, byte for byte, with an `error` header."""
        return f"{self.input_topic}.dlq"

    @property
    def changelog_topic(self) -> str:
        """Compacted, co-partitioned with the input: the latest window per stream."""
        return f"{self.input_topic}.{self.group}.windows"

    @property
    def transactional_id(self) -> str:
        """Stable per worker id, so a restarted worker fences its previous incarnation."""
        return f"radiusguard-{self.group}-{self.worker_id}"

    def redacted_kafka(self) -> dict:
        """Kafka settings safe to log."""
        return {k: ("***" if _secret(k) else v) for k, v in self.kafka.items()}


def _secret(key: str) -> bool:
    return key in SECRET_KEYS or any(word in key for word in SECRET_WORDS)


def client_settings(client: type, settings: dict) -> dict:
    """The subset of kafka-python settings that `client` (KafkaConsumer, KafkaProducer or
    KafkaAdminClient) accepts; ConfigError for a key none of the three knows."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    known = set().union(*(c.DEFAULT_CONFIG for c in (KafkaConsumer, KafkaProducer,
                                                      KafkaAdminClient)))
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown kafka-python settings: {', '.join(unknown)}")
    return {k: v for k, v in settings.items() if k in client.DEFAULT_CONFIG}


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
