"""Prometheus metrics of one worker, and a small HTTP server for /metrics, /healthz, /readyz."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from worker.formats.codec import Verdict

RADIUS_BUCKETS = (0.0, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.02,
                  0.025, 0.03, 0.04, 0.06, 0.1, 0.256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The worker's counters and histograms in their own registry (no process-wide state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inputs = Counter("radiusguard_inputs", "Inputs by verdict", ["verdict"], registry=r)
        self.dead_letters = Counter("radiusguard_dead_letters", "Dead-letter records", registry=r)
        self.radius = Histogram("radiusguard_radius", "Certified radii", buckets=RADIUS_BUCKETS,
                                registry=r)
        self.latency = Histogram("radiusguard_batch_seconds", "Seconds from the poll of a "
                                 "transaction's first record to its commit",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("radiusguard_batch_size", "Records per transaction",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.lag = Gauge("radiusguard_lag", "Records behind the end, per partition",
                         ["partition"], registry=r)
        self.restores = Counter("radiusguard_state_restores", "Partitions whose windows were "
                                "restored from the changelog", registry=r)
        self.aborts = Counter("radiusguard_transaction_aborts", "Batches whose transaction was "
                              "aborted (and re-read)", registry=r)
        self.ready = False
        self.alive = True

    def observe_verdicts(self, verdicts: Iterable[tuple[bytes, Verdict]]) -> None:
        """Count committed verdicts by kind and record their radii."""
        for _, v in verdicts:
            self.inputs.labels(v.verdict).inc()
            if v.radius is not None:
                self.radius.observe(v.radius)


class MetricsServer:
    """Serves /metrics (Prometheus text), /healthz (alive) and /readyz (assigned and restored)."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        metrics_ref = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                code, ctype, body = _route(self.path, metrics_ref)
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       name="metrics-http")
        self.thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _route(path: str, metrics: Metrics) -> tuple[int, str, bytes]:
    """Status, content type and body for one GET."""
    if path.startswith("/metrics"):
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
    if path.startswith("/healthz"):
        return (200, "text/plain", b"ok\n") if metrics.alive else (503, "text/plain", b"stopping\n")
    if path.startswith("/readyz"):
        if metrics.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"
    return 404, "text/plain", b"not found\n"
