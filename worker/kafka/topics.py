"""The topics a worker needs: the input topic must exist; the changelog, the dead-letter topic
and the output topic are created (as many partitions as the input) when missing."""

from __future__ import annotations

import time

import structlog
from kafka import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from worker.kafka.config import ConfigError, ServiceConfig, client_settings
from worker.kafka.transactions import DEAD_LETTER_OVERHEAD

__all__ = ["check_topics"]

log = structlog.get_logger("radiusguard.worker")


def check_topics(cfg: ServiceConfig) -> None:
    """Refuse to start without the input topic; create the changelog, DLQ and output topic
    if missing (as many partitions as the input) and check the changelog's partitions."""
    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap,
                             client_id=f"{cfg.worker_id}-admin",
                             **client_settings(KafkaAdminClient, cfg.kafka))
    try:
        n = _partitions(admin, cfg.input_topic)
        if not n:
            raise ConfigError(
                f"input topic {cfg.input_topic!r} does not exist on {cfg.bootstrap}; "
                "create it (partitions = the parallelism you want) and start again"
            )
        wanted = {
            cfg.changelog_topic: {"cleanup.policy": "compact"},
            cfg.dlq_topic: {
                "max.message.bytes": str(cfg.max_dead_letter_bytes + DEAD_LETTER_OVERHEAD)
            },
            cfg.output_topic: {},
        }
        for topic, configs in wanted.items():
            if _partitions(admin, topic):
                continue
            try:
                admin.create_topics(
                    {topic: {"num_partitions": n, "replication_factor": -1,
                             "configs": configs}},
                    wait_for_metadata=True,
                )
                log.info("created topic", topic=topic, partitions=n)
            except TopicAlreadyExistsError:
                pass  # another worker was quicker
        m = _partitions(admin, cfg.changelog_topic, wait_s=10)
        if m != n:
            raise ConfigError(
                f"changelog {cfg.changelog_topic!r} has {m} partitions, the input topic "
                f"{n}: they must match (a stream's window lives with its input partition)"
            )
    finally:
        admin.close()


def _partitions(admin: KafkaAdminClient, topic: str, wait_s: float = 0.0) -> int:
    """Number of partitions of a topic, 0 if it does not exist (waits for fresh metadata)."""
    deadline = time.monotonic() + wait_s
    while True:
        info = admin.describe_topics([topic])
        meta = info[0] if info else {}
        n = len(meta.get("partitions") or []) if meta.get("error_code", 0) == 0 else 0
        if n or time.monotonic() >= deadline:
            return n
        time.sleep(0.2)
