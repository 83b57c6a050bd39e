"""Pytest fixtures backed by a real local Kafka broker (worker.local.broker); never skipped.

Set ``KAFKA_BOOTSTRAP`` to reuse an existing broker; otherwise one is started per session. The
jar cache lives at ``<repo>/.cache/kafka/libs`` so Maven downloads the broker only once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from worker.local import broker

__all__ = ["LocalBroker", "broker_factory", "kafka_bootstrap", "topic_factory"]

REPO_ROOT = Path(__file__).resolve().parents[1]
JAR_CACHE = REPO_ROOT / ".cache" / "kafka" / "libs"


class LocalBroker:
    """A broker on fixed free ports in its own data dir; restarts keep the same bootstrap."""

    def __init__(self, data_dir: Path, **overrides: object) -> None:
        settings: dict[str, object] = {
            "port": broker.free_port(),
            "controller_port": broker.free_port(),
            "data_dir": data_dir,
            "jar_cache": JAR_CACHE,
        }
        settings.update(overrides)
        self.config = broker.BrokerConfig(**settings)  # type: ignore[arg-type]

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients (valid whether or not the broker is running)."""
        return self.config.bootstrap

    def start(self, timeout: float = 90) -> str:
        """Start (or confirm) the broker and return its bootstrap."""
        return broker.start(self.config, timeout=timeout)

    def stop(self, timeout: float = 30) -> bool:
        """Graceful shutdown (SIGTERM)."""
        return broker.stop(self.config, timeout=timeout)

    def kill(self) -> bool:
        """Crash the broker (SIGKILL)."""
        return broker.kill(self.config)

    def status(self) -> str | None:
        """Bootstrap if running and answering, else None."""
        return broker.status(self.config)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap of a running broker: ``$KAFKA_BOOTSTRAP`` or one started for this session."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    local = LocalBroker(tmp_path_factory.mktemp("kafka") / "broker")
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., LocalBroker]]:
    """Factory of private, not-yet-started brokers (``BrokerConfig`` overrides as kwargs)."""
    made: list[LocalBroker] = []

    def make(**overrides: object) -> LocalBroker:
        local = LocalBroker(tmp_path / f"broker{len(made)}", **overrides)
        made.append(local)
        return local

    yield make
    for local in made:
        local.stop()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics (ready for use) and delete them after the test."""
    created: list[str] = []
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="tests-topic-factory")

    def make(
        partitions: int = 4, prefix: str = "test", configs: dict[str, str] | None = None
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        spec: dict[str, object] = {"num_partitions": partitions, "replication_factor": 1}
        if configs:
            spec["configs"] = configs
        admin.create_topics({name: spec}, wait_for_metadata=True)
        created.append(name)
        return name

    try:
        yield make
    finally:
        if created:
            try:
                admin.delete_topics(created)
            except KafkaError:
                pass  # best effort: the broker (or the test) may already have gone away
        admin.close()
