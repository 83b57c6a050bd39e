"""Waiting for a Kafka broker to accept connections before any Kafka client starts.

kafka-python retries an unreachable bootstrap server for half a minute, logging each attempt,
and then says only "Unable to bootstrap". A plain TCP connect to each bootstrap address, until
one answers or a deadline passes, names the cause (connection refused, unknown host, timed
out) and the address in one line.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from worker.kafka.config import ConfigError, ServiceConfig
from worker.metrics import Metrics, MetricsServer

__all__ = ["BrokerUnreachable", "await_broker", "bootstrap_addresses", "wait_for_broker"]


class BrokerUnreachable(ConfigError):
    """No bootstrap address accepted a connection in time; the message names why."""


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """(host, port) of each entry of "host[:port][,...]" ([v6]:port allowed; port 9092 by
    default, as kafka-python has it)."""
    out = []
    for entry in (e.strip() for e in bootstrap.split(",")):
        if entry and ":" not in entry:
            entry = f"{entry}:9092"
        host, sep, port = entry.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap server {entry!r} is not host:port")
        out.append((host, int(port)))
    return out


def wait_for_broker(
    bootstrap: str,
    timeout_s: float = 30.0,
    interval_s: float = 0.5,
    on_retry: Callable[[str], None] | None = None,
) -> str:
    """The first "host:port" that accepts a TCP connection, trying every address until
    timeout_s has passed; BrokerUnreachable naming each address's last failure otherwise."""
    addresses = bootstrap_addresses(bootstrap)
    deadline = time.monotonic() + timeout_s
    failures: dict[str, str] = {}
    while True:
        for host, port in addresses:
            where = f"{host}:{port}"
            left = deadline - time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=max(0.2, min(5.0, left))):
                    return where
            except OSError as exc:
                failures[where] = _why(exc, host)
        if time.monotonic() + interval_s > deadline:
            causes = "; ".join(f"{w}: {why}" for w, why in failures.items())
            raise BrokerUnreachable(
                f"cannot reach the Kafka broker within {timeout_s:g} s ({causes}); check "
                "--bootstrap and that the broker is running"
            )
        if on_retry is not None:
            on_retry("; ".join(f"{w}: {why}" for w, why in failures.items()))
        time.sleep(interval_s)


def await_broker(cfg: ServiceConfig, metrics: Metrics, timeout_s: float) -> str:
    """wait_for_broker for a worker about to start, answering /healthz (alive, not ready) on
    its metrics port meanwhile; the worker serves that port itself afterwards."""
    server = None
    if cfg.metrics_port:  # port 0 would pick another port than the worker's own server
        server = MetricsServer(metrics, cfg.metrics_host, cfg.metrics_port)
    try:
        return wait_for_broker(cfg.bootstrap, timeout_s)
    finally:
        if server is not None:
            server.close()


def _why(exc: OSError, host: str) -> str:
    """A short cause for a failed connect."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {host!r} ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()
