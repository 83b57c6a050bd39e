"""`radiusguard demo`: a local broker, two workers, a recorded stream replayed, a verdict table.

Starts (and afterwards stops) its own single-node broker unless --bootstrap names one, runs the
workers as `radiusguard serve` subprocesses (logs in the data dir), replays the recording into a
fresh input topic, reads the verdicts with read_committed until every input has one, and prints
accepted/rejected shares per recorded category with throughput and end-to-end latency.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from worker.argtypes import positive_float, positive_int
from worker.paths import broker_data_dir, jar_cache_dir
from worker.policy import POLICIES

__all__ = ["CATEGORIES", "DemoError", "Tally", "add_arguments", "format_report", "run_demo"]

DEFAULT_MODEL = Path("models/cnn-6-16-128-relu.onnx")
DEFAULT_PROFILE = Path("models/cnn-6-16-128-relu.profile.json")
DEFAULT_STREAM = Path("models/demo-stream.rgr")
CATEGORIES = ("valid", "misclassified", "fgsm_0.1", "fgsm_0.05", "cw", "hop")


class DemoError(RuntimeError):
    """The demo cannot run or could not finish; the message says why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (defaults: the shipped CNN, its profile and recording)."""
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="its profile.json")
    p.add_argument("--stream", type=Path, default=DEFAULT_STREAM, help="recording (.rgr)")
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes")
    p.add_argument("--jobs", type=positive_int, default=1, help="verifier threads per worker")
    p.add_argument("--policy", choices=tuple(POLICIES), default="threshold",
                   help="threshold, or distribution (Algorithm 2)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=positive_float, default=1.0,
                      help="replay speed as a multiple of the recorded pace")
    pace.add_argument("--fast", action="store_true", help="replay as fast as possible")
    p.add_argument("--streams", type=positive_int, default=1,
                   help="fan the recording out to N streams")
    p.add_argument("--bootstrap", help="use this running broker instead of starting one")
    p.add_argument("--data-dir", type=Path, default=broker_data_dir("demo"),
                   help="the demo broker's data dir (also holds the worker logs)")
    p.add_argument("--jar-cache", type=Path, default=jar_cache_dir(),
                   help="where Maven puts the broker's jars (downloaded once)")
    p.add_argument("--timeout", type=positive_float, default=600.0,
                   help="give up after this many seconds without finishing")


@dataclass
class Tally:
    """Verdicts per category and the end-to-end latencies (seconds) seen by the demo."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(
        lambda: defaultdict(int)))
    latencies: list[float] = field(default_factory=list)
    first_send: float | None = None
    last_verdict: float | None = None
    total: int = 0

    def add(self, category: str, verdict: str, latency: float | None) -> None:
        """Count one verdict."""
        self.counts[category][verdict] += 1
        self.total += 1
        if latency is not None:
            self.latencies.append(latency)


def format_report(tally: Tally, workers: int, policy: str) -> str:
    """The verdict table, throughput and latency percentiles as text."""
    order = [c for c in CATEGORIES if c in tally.counts]
    order += sorted(c for c in tally.counts if c not in CATEGORIES)
    lines = [f"{'category':16} {'count':>6} {'accepted':>9} {'rejected':>9} {'invalid':>8}"]
    totals: dict[str, int] = defaultdict(int)
    for cat in order:
        row = tally.counts[cat]
        n = sum(row.values())
        for k, v in row.items():
            totals[k] += v
        lines.append(_row(cat, n, row))
    lines.append(_row("all", tally.total, totals))
    if tally.first_send is not None and tally.last_verdict is not None:
        span = max(tally.last_verdict - tally.first_send, 1e-9)
        lines.append(f"throughput: {tally.total / span:.1f} inputs/s over {span:.1f} s "
                     f"({workers} workers, {policy} policy)")
    if tally.latencies:
        ms = sorted(1000.0 * x for x in tally.latencies)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        lines.append(f"latency (send to committed verdict): p50 {statistics.median(ms):.0f} ms, "
                     f"p99 {p99:.0f} ms")
    return "\n".join(lines)


def _row(name: str, n: int, row: dict[str, int]) -> str:
    def pct(k: str) -> str:
        return f"{100.0 * row.get(k, 0) / n:8.1f}%" if n else f"{'-':>9}"

    return f"{name:16} {n:6d} {pct('accept')} {pct('reject')} {pct('invalid')[1:]}"


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo end to end; every process it started is stopped on the way out."""
    from worker.formats.recording import read_recording

    _check_options(args)
    _check_artefacts(args.model, args.profile, args.stream)
    recorded = list(read_recording(args.stream))
    if not recorded:
        raise DemoError(f"{args.stream}: the recording holds no records")
    expected = len(recorded) * args.streams
    run = uuid.uuid4().hex[:8]
    topic, verdicts_topic, group = f"demo-{run}.inputs", f"demo-{run}.verdicts", f"demo-{run}"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        shield = threading.current_thread() is threading.main_thread()
        if shield:  # restored last, after every cleanup step
            stack.callback(signal.signal, signal.SIGINT, signal.getsignal(signal.SIGINT))
        try:
            bootstrap = args.bootstrap or _start_broker(args, stack)
            _create_topic(bootstrap, topic, 4)
            workers = [
                _start_worker(args, bootstrap, topic, verdicts_topic, group, i, stack)
                for i in range(args.workers)
            ]
            _say(f"waiting for {len(workers)} workers to join and restore their windows")
            _wait_ready(workers, time.monotonic() + args.timeout)
            tally = _replay_and_collect(args, bootstrap, topic, verdicts_topic, recorded,
                                        expected, workers)
            print(format_report(tally, len(workers), args.policy))
        finally:
            if shield:  # a second Ctrl-C must not leave workers or the broker behind
                signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


def _check_options(args: argparse.Namespace) -> None:
    for name in ("workers", "jobs", "streams"):
        if getattr(args, name) < 1:
            raise DemoError(f"--{name} must be >= 1")
    if not args.speed > 0 or not args.timeout > 0:
        raise DemoError("--speed and --timeout must be positive")


def _check_artefacts(model: Path, profile: Path, stream: Path) -> None:
    """Clear errors for missing or mismatched inputs before anything is started."""
    missing = [(what, p) for what, p in (("model", model), ("profile", profile),
                                         ("recording", stream)) if not p.is_file()]
    if missing:
        what = ", ".join(f"{w} {p}" for w, p in missing)
        raise DemoError(
            f"missing {what}; pass --model/--profile/--stream, or create them "
            "(`make models`, `radiusguard calibrate`, `radiusguard record`)"
        )
    from verifier.onnx.importer import load_onnx
    from worker.profile import check_model, load_profile

    check_model(load_profile(profile), load_onnx(model))


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _start_broker(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    from worker.local import broker

    cfg = broker.BrokerConfig(port=broker.free_port(), data_dir=args.data_dir / "broker",
                              jar_cache=args.jar_cache)
    _say(f"starting a local Kafka broker in {cfg.data_dir}")
    stack.callback(_stop_broker, cfg)
    bootstrap = broker.start(cfg)
    _say(f"broker at {bootstrap}")
    return bootstrap


def _stop_broker(cfg) -> None:
    from worker.local import broker

    _say("stopping the broker")
    broker.stop(cfg)


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="radiusguard-demo")
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": -1}},
                            wait_for_metadata=True)
    finally:
        admin.close()


@dataclass
class _Worker:
    proc: subprocess.Popen
    port: int
    log: Path


def _start_worker(args: argparse.Namespace, bootstrap: str, topic: str, out: str, group: str,
                  index: int, stack: contextlib.ExitStack) -> _Worker:
    from worker.local.broker import free_port

    port = free_port()
    log = args.data_dir / f"worker-{index}.log"
    cmd = [
        sys.executable, "-m", "worker.cli", "serve", "--bootstrap", bootstrap,
        "--model", str(args.model), "--profile", str(args.profile), "--policy", args.policy,
        "--input-topic", topic, "--output-topic", out, "--group", group,
        "--worker-id", f"{group}-w{index}", "--jobs", str(args.jobs),
        "--metrics-port", str(port),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    worker = _Worker(proc, port, log)
    stack.callback(_stop_worker, worker, index)
    return worker


def _stop_worker(worker: _Worker, index: int) -> None:
    proc = worker.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    _say(f"worker {index} stopped (exit {proc.returncode}; log {worker.log})")


def _wait_ready(workers: list[_Worker], deadline: float) -> None:
    pending = list(workers)
    while pending:
        _check_alive(workers)
        pending = [w for w in pending if not _ready(w.port)]
        if pending and time.monotonic() > deadline:
            raise DemoError(f"workers not ready in time; see {pending[0].log}")
        time.sleep(0.3)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _check_alive(workers: list[_Worker]) -> None:
    for w in workers:
        if w.proc.poll() is not None:
            raise DemoError(f"a worker exited with code {w.proc.returncode}: "
                            f"{_last_line(w.log)} (log {w.log})")


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _replay_and_collect(args: argparse.Namespace, bootstrap: str, topic: str, out: str,
                        recorded: list, expected: int, workers: list[_Worker]) -> Tally:
    """Replay in a thread; read verdicts until every input has one."""
    import msgpack
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from worker.formats.codec import decode_verdict
    from worker.formats.recording import produce

    tally = Tally()
    sent: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    lock = threading.Lock()

    def on_send(key: bytes | None, value: bytes | None) -> None:
        now = time.monotonic()
        try:
            rid = msgpack.unpackb(value, raw=False).get("id") if value else None
        except Exception:  # an undecodable record still gets a verdict, just no latency
            rid = None
        stream = key.decode("utf-8", "replace") if key else "_default"
        with lock:
            if tally.first_send is None:
                tally.first_send = now
            sent[(stream, rid)].append(now)

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             client_id="radiusguard-demo-verdicts")
    failure: list[BaseException] = []
    producer = None
    try:
        tps = [TopicPartition(out, p) for p in sorted(consumer.partitions_for_topic(out) or [])]
        if not tps:
            raise DemoError(f"the workers did not create the verdict topic {out}")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                 client_id="radiusguard-demo-replay")

        def replay() -> None:
            try:
                produce(producer, topic, recorded, speed=None if args.fast else args.speed,
                        streams=args.streams, on_send=on_send)
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

        pace = "as fast as possible" if args.fast else f"at {args.speed:g}x the recorded pace"
        _say(f"replaying {len(recorded)} records x {args.streams} streams {pace}")
        thread = threading.Thread(target=replay, name="demo-replay", daemon=True)
        thread.start()
        deadline = time.monotonic() + args.timeout
        for item in _verdicts(consumer, decode_verdict):
            if item is not None:
                verdict, at = item
                with lock:
                    times = sent.get((verdict.get("stream"), verdict.get("id")))
                    t_sent = times.pop(0) if times else None
                meta = verdict.get("meta")
                category = str(meta.get("category", "-")) if isinstance(meta, dict) else "-"
                tally.add(category, str(verdict.get("verdict")),
                          None if t_sent is None else at - t_sent)
                tally.last_verdict = at
                if tally.total >= expected:
                    break
            if failure:
                raise DemoError(f"replay failed: {failure[0]!r}")
            if time.monotonic() > deadline:
                raise DemoError(f"only {tally.total} of {expected} verdicts after "
                                f"{args.timeout:.0f}s")
            _check_alive(workers)
        thread.join(timeout=30)
    finally:
        if producer is not None:
            producer.close(timeout=5)
        consumer.close()
    return tally


def _verdicts(consumer, decode) -> Iterator[tuple[dict, float] | None]:
    """Decoded verdicts with their arrival time; None after an idle poll (time for checks)."""
    while True:
        polled = consumer.poll(timeout_ms=200)
        now = time.monotonic()
        if not polled:
            yield None
            continue
        for msgs in polled.values():
            for m in msgs:
                try:
                    yield decode(m.value), now
                except ValueError:
                    continue
