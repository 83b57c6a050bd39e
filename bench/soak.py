"""Soak run of one `radiusguard serve` worker against a local broker: find its capacity, feed it
MNIST inputs at a fraction of that for a set time, and watch throughput, consumer lag,
end-to-end latency and the worker's memory. Prints a table every ~10 s and a summary with the
memory growth after warm-up; asserts nothing. Stops by itself and stops all it started.

    python -m bench.soak [--minutes 5] [--rate-fraction 0.8] [--sample-s 10] [--policy ...]

Capacity is the lower of the offline throughput of the worker's processing path (worker.processor
with the FNN model and a profile calibrated here) and a short saturation run through the
broker. Latency is the verdict record's timestamp minus the input's `ts`; "seen" is when a
read_committed reader got the verdict. State lives under .cache/kafka/soak (replaced each run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from verifier.onnx.importer import load_onnx  # noqa: E402
from verifier.score import plan_for  # noqa: E402
from worker.calibrate import calibrate
from worker.formats.codec import decode_verdict, encode_input  # noqa: E402
from worker.local import broker  # noqa: E402
from worker.processor import Processor, Record, Scorer  # noqa: E402
from worker.profile import Profile, save_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "fnn-3x30-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"
DATA_DIR = ROOT / ".cache" / "kafka" / "soak"
JAR_CACHE = ROOT / ".cache" / "kafka" / "libs"
INPUT_TOPIC, OUTPUT_TOPIC, GROUP = "soak.inputs", "soak.verdicts", "soak"
PARTITIONS = 4


class SoakError(RuntimeError):
    """The soak run cannot go on (worker died, broker or topics missing)."""


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"soak: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """MNIST images and labels, sent round robin over `streams` stream ids."""

    xs: np.ndarray
    ys: np.ndarray
    streams: int
    hostile_every: int  # every n-th record is malformed (0: none); it keeps its id

    def record(self, i: int, ts: int) -> tuple[str, bytes | None, bytes]:
        """(id, key, value) of record i with input timestamp ts (ms)."""
        rid, stream = f"soak-{i}", f"cam-{i % self.streams}"
        x, label = self.xs[i % len(self.xs)], int(self.ys[i % len(self.ys)])
        if self.hostile_every and i % self.hostile_every == self.hostile_every - 1:
            bad = np.full(x.shape, np.nan) if i % 2 else x[:-1] / 255.0
            key, value = encode_input(rid, bad, stream=stream, dtype="float64", ts=ts)
        else:
            key, value = encode_input(rid, x, stream=stream, dtype="uint8", ts=ts, label=label)
        return rid, key, value


def make_profile(path: Path, n: int, policy: str, jobs: int) -> Profile:
    """A profile for the FNN fitted on the first n MNIST test images, saved to path."""
    data = np.load(MNIST)
    profile = calibrate(load_onnx(MODEL), data["x"][:n], data["y"][:n], max_false_alarm=0.03,
                        window_size=50, jobs=jobs, policy=policy, name="soak-fnn")
    save_profile(profile, path)
    return profile


def offline_rate(profile: Profile, inputs: Inputs, policy: str, jobs: int, batch: int,
                 seconds: float) -> float:
    """Records per second through worker.processor alone (decode, radius, validation)."""
    net = load_onnx(MODEL)
    znet = plan_for(net, profile.verifier)
    v = profile.verifier
    scorer = Scorer(znet, v, jobs)
    try:
        processor = Processor(znet, profile, policy, scorer)
        states: dict = {}
        done, i, t0 = 0, 0, time.monotonic()
        while time.monotonic() - t0 < seconds or done < 2 * batch:
            records = []
            for _ in range(batch):
                _, key, value = inputs.record(i, int(time.time() * 1000))
                records.append(Record(INPUT_TOPIC, i % PARTITIONS, i // PARTITIONS, key, value))
                i += 1
            states.update(processor.process(records, states).states)
            done += len(records)
        return done / (time.monotonic() - t0)
    finally:
        scorer.close()


# ----------------------------------------------------------------------------- measuring


@dataclass
class Window:
    """What happened since the last sample."""

    latencies: list[float] = field(default_factory=list)  # verdict record ts - input ts, ms
    seen: list[float] = field(default_factory=list)  # read by us - input ts, ms
    sent: int = 0
    verdicts: int = 0


class Ledger:
    """Input timestamps by id, acked and answered counts, per-sample windows (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}
        self.acked = 0
        self.failed = 0
        self.verdicts = 0
        self.duplicates = 0
        self.kinds: dict[str, int] = {}
        self.window = Window()
        self.all_latencies: list[float] = []
        self.all_seen: list[float] = []
        self.measure = True  # False during calibration: those verdicts are counted only

    def sent(self, rid: str, ts: int) -> None:
        with self.lock:
            self.pending[rid] = ts
            self.window.sent += 1

    def ack(self, ok: bool) -> None:
        with self.lock:
            if ok:
                self.acked += 1
            else:
                self.failed += 1

    def answer(self, rid: str | None, kind: str, record_ts: int, now_ms: float) -> None:
        with self.lock:
            ts = self.pending.pop(rid, None) if rid is not None else None
            if rid is not None and ts is None:
                self.duplicates += 1
                return
            self.verdicts += 1
            self.window.verdicts += 1
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            if ts is not None and self.measure:
                self.window.latencies.append(record_ts - ts)
                self.window.seen.append(now_ms - ts)

    def take(self) -> Window:
        """The window since the last call (its latencies also go to the run's totals)."""
        with self.lock:
            w, self.window = self.window, Window()
            self.all_latencies += w.latencies
            self.all_seen += w.seen
            return w


def read_verdicts(bootstrap: str, ledger: Ledger, stop: threading.Event,
                  errors: list[BaseException]) -> None:
    """Read the verdict topic (read_committed) from its beginning into the ledger until stop."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             client_id="soak-verdicts",
                             fetch_max_wait_ms=10)  # see bench.worker: the reader's own wait
    try:
        deadline = time.monotonic() + 60
        while not (parts := consumer.partitions_for_topic(OUTPUT_TOPIC)):
            if time.monotonic() > deadline or stop.is_set():
                raise SoakError(f"the worker did not create {OUTPUT_TOPIC}")
            time.sleep(0.5)
        tps = [TopicPartition(OUTPUT_TOPIC, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            for msgs in consumer.poll(timeout_ms=200).values():
                now_ms = time.time() * 1000.0
                for m in msgs:
                    try:
                        v = decode_verdict(m.value)
                    except ValueError:
                        continue
                    ledger.answer(v.get("id"), str(v.get("verdict")), m.timestamp, now_ms)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)
    finally:
        consumer.close()


def produce(producer: KafkaProducer, inputs: Inputs, ledger: Ledger, start: int, count: int,
            rate: float | None, stop: threading.Event) -> int:
    """Send inputs start..start+count-1, paced at `rate` per second (None: at once)."""
    t0 = time.monotonic()
    for n in range(count):
        if stop.is_set():
            return n
        if rate:
            delay = t0 + n / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return n
        ts = int(time.time() * 1000)
        rid, key, value = inputs.record(start + n, ts)
        ledger.sent(rid, ts)
        future = producer.send(INPUT_TOPIC, key=key, value=value)
        future.add_callback(lambda _md: ledger.ack(True))
        future.add_errback(lambda _exc: ledger.ack(False))
    producer.flush()
    return count


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS) in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.M).group(1)) / 1024.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_lag(port: int) -> float | None:
    """The worker's own lag (sum of radiusguard_lag over partitions), None if unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    values = re.findall(r"^radiusguard_lag\{[^}]*\}\s+([-+0-9.eE]+)$", text, re.M)
    return sum(float(v) for v in values) if values else None


def pct(values: list[float], q: float) -> float:
    """The q-th percentile, NaN for no values."""
    return float(np.percentile(values, q)) if values else math.nan


# ----------------------------------------------------------------------------- processes


@dataclass
class WorkerProc:
    """The `radiusguard serve` subprocess."""

    proc: subprocess.Popen
    port: int
    log: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            lines = self.log.read_text(errors="replace").strip().splitlines() or ["(empty log)"]
            raise SoakError(f"the worker exited with code {self.proc.returncode}: {lines[-1]} "
                            f"(log {self.log})")

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        say(f"worker stopped (exit {self.proc.returncode}; log {self.log})")


def start_worker(bootstrap: str, profile_path: Path, args: argparse.Namespace,
                 stack: contextlib.ExitStack) -> WorkerProc:
    """One `radiusguard serve` subprocess with a metrics port, stopped when the stack unwinds."""
    script = Path(sys.executable).parent / "radiusguard"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]
    port = broker.free_port()
    log = args.data_dir / "worker.log"
    cmd += [
        "serve", "--bootstrap", bootstrap, "--model", str(MODEL), "--profile", str(profile_path),
        "--policy", args.policy, "--input-topic", INPUT_TOPIC, "--output-topic", OUTPUT_TOPIC,
        "--group", GROUP, "--worker-id", "soak-w0", "--jobs", str(args.jobs),
        "--max-batch", str(args.max_batch), "--metrics-port", str(port),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    worker = WorkerProc(proc, port, log)
    stack.callback(worker.stop)
    return worker


def start_broker(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    """A fresh local broker under the soak data dir, stopped when the stack unwinds."""
    cfg = broker.BrokerConfig(port=broker.free_port(), controller_port=broker.free_port(),
                              data_dir=args.data_dir / "broker", jar_cache=JAR_CACHE)
    broker.stop(cfg)  # one left running by an earlier, killed soak run
    shutil.rmtree(cfg.data_dir, ignore_errors=True)
    stack.callback(lambda: (say("stopping the broker"), broker.stop(cfg)))
    say(f"starting a broker in {cfg.data_dir}")
    return broker.start(cfg)


def create_topic(bootstrap: str) -> None:
    """The input topic with PARTITIONS partitions."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="soak-admin")
    try:
        admin.create_topics({INPUT_TOPIC: {"num_partitions": PARTITIONS,
                                           "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        admin.close()


def wait_for(what: str, done: Callable[[], bool], timeout: float,
             checks: Callable[[], None]) -> None:
    """Poll `done` until true; SoakError after timeout. `checks` raises if something died."""
    deadline = time.monotonic() + timeout
    while not done():
        checks()
        if time.monotonic() > deadline:
            raise SoakError(f"{what}: not done within {timeout:.0f}s")
        time.sleep(0.2)


# ----------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
    """Calibrate, start broker and worker, saturate, soak, report."""
    args.data_dir.mkdir(parents=True, exist_ok=True)
    data = np.load(MNIST)
    inputs = Inputs(data["x"], data["y"], args.streams, args.hostile_every)
    profile_path = args.data_dir / "fnn.profile.json"
    say(f"calibrating a {args.policy} profile on {args.calibration_images} MNIST images")
    profile = make_profile(profile_path, args.calibration_images, args.policy, args.jobs)
    offline = offline_rate(profile, inputs, args.policy, args.jobs, args.max_batch, 5.0)
    say(f"offline processing path: {offline:.1f} inputs/s ({args.jobs} threads)")

    ledger, stop, errors = Ledger(), threading.Event(), []
    with contextlib.ExitStack() as stack:
        bootstrap = start_broker(args, stack)
        create_topic(bootstrap)
        worker = start_worker(bootstrap, profile_path, args, stack)

        def checks() -> None:
            worker.check()
            if errors:
                raise SoakError(f"verdict reader failed: {errors[0]!r}")

        wait_for("worker ready", worker.ready, 180, checks)
        say(f"worker ready (pid {worker.proc.pid}, metrics :{worker.port})")
        reader = threading.Thread(target=read_verdicts, args=(bootstrap, ledger, stop, errors),
                                  name="soak-verdicts", daemon=True)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                 client_id="soak-produce")
        threads = [reader]

        def shutdown() -> None:
            stop.set()
            for t in threads:
                if t.is_alive():
                    t.join(timeout=15)
            producer.close(timeout=10)

        stack.callback(shutdown)
        reader.start()

        capacity, sent = offline, 0
        if args.saturation_s > 0:
            ledger.measure = False
            burst = max(200, int(offline * args.saturation_s))
            say(f"saturation: {burst} inputs at once")
            t0 = time.monotonic()
            sent = produce(producer, inputs, ledger, 0, burst, None, stop)
            wait_for("first verdict", lambda: ledger.verdicts > 0, 120, checks)
            t1, v1 = time.monotonic(), ledger.verdicts
            wait_for("saturation drain", lambda: ledger.verdicts >= sent,
                     max(120.0, 4 * args.saturation_s), checks)
            t2 = time.monotonic()
            measured = (ledger.verdicts - v1) / max(t2 - t1, 1e-3)
            say(f"saturation: {measured:.1f} verdicts/s through the broker "
                f"({t2 - t0:.1f}s for {burst})")
            capacity = min(offline, measured)
            ledger.take()
            ledger.measure = True
        rate = args.rate_fraction * capacity
        say(f"soak: {args.minutes:g} min at {rate:.1f} inputs/s "
            f"({args.rate_fraction:.0%} of {capacity:.1f}/s)")
        total = int(rate * args.minutes * 60)
        feeder = threading.Thread(target=produce, name="soak-produce", daemon=True,
                                  args=(producer, inputs, ledger, sent, total, rate, stop))
        threads.append(feeder)
        samples = sample_loop(args, worker, ledger, feeder, checks)
        waited = drain(ledger, checks, 60.0)
        report(args, capacity, offline, rate, samples, ledger, waited)
    return 0


@dataclass
class Sample:
    """One row of the table."""

    t: float
    sent_s: float
    verdicts_s: float
    lag: int
    worker_lag: float | None
    p50: float
    p99: float
    p99_seen: float
    rss: float
    cpu: float


def sample_loop(args: argparse.Namespace, worker: WorkerProc, ledger: Ledger,
                feeder: threading.Thread, checks: Callable[[], None]) -> list[Sample]:
    """Run the feeder to its end, printing a row every sample_s seconds; the rows."""
    pid = worker.proc.pid
    samples: list[Sample] = []
    print(f"{'t s':>6} {'sent/s':>7} {'verd/s':>7} {'lag':>6} {'lag(w)':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'p99seen':>7} {'rss MB':>7} {'cpu %':>6}", flush=True)
    ledger.take()
    t0 = last = time.monotonic()
    cpu_last = cpu_s(pid)
    feeder.start()
    while True:
        time.sleep(max(0.0, last + args.sample_s - time.monotonic()))
        checks()
        now, cpu_now, w = time.monotonic(), cpu_s(pid), ledger.take()
        dt = now - last
        s = Sample(now - t0, w.sent / dt, w.verdicts / dt, ledger.acked - ledger.verdicts,
                   metrics_lag(worker.port), pct(w.latencies, 50), pct(w.latencies, 99),
                   pct(w.seen, 99), rss_mb(pid), 100.0 * (cpu_now - cpu_last) / dt)
        samples.append(s)
        lag_w = "-" if s.worker_lag is None else f"{s.worker_lag:.0f}"
        print(f"{s.t:6.0f} {s.sent_s:7.1f} {s.verdicts_s:7.1f} {s.lag:6d} {lag_w:>6} "
              f"{s.p50:7.1f} {s.p99:7.1f} {s.p99_seen:7.1f} {s.rss:7.1f} {s.cpu:6.0f}",
              flush=True)
        last, cpu_last = now, cpu_now
        if not feeder.is_alive():
            return samples


def drain(ledger: Ledger, checks: Callable[[], None], timeout: float) -> float:
    """Wait until every acknowledged input has its verdict (or timeout); seconds waited."""
    t0 = time.monotonic()
    while ledger.verdicts < ledger.acked and time.monotonic() - t0 < timeout:
        checks()
        time.sleep(0.2)
    ledger.take()
    return time.monotonic() - t0


def report(args: argparse.Namespace, capacity: float, offline: float, rate: float,
           samples: list[Sample], ledger: Ledger, waited: float) -> None:
    """The summary: counts, latency, throughput and memory growth after warm-up."""
    duration = args.minutes * 60
    warmup = min(60.0, 0.25 * duration)
    after = [s for s in samples if s.t >= warmup] or samples[-1:]
    lost = len(ledger.pending) - ledger.failed
    lat, seen = ledger.all_latencies, ledger.all_seen
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(ledger.kinds.items()))
    print(f"\ncapacity {capacity:.1f}/s (offline path {offline:.1f}/s); target {rate:.1f}/s = "
          f"{args.rate_fraction:.0%}; policy {args.policy}, {args.jobs} threads, "
          f"batches of {args.max_batch}")
    print(f"inputs acked {ledger.acked} (failed sends {ledger.failed}), verdicts "
          f"{ledger.verdicts} ({kinds}); lost {lost}, duplicates {ledger.duplicates}; drained "
          f"in {waited:.1f}s")
    if samples:
        mean = float(np.mean([s.verdicts_s for s in samples]))
        print(f"throughput {mean:.1f} verdicts/s; lag max {max(s.lag for s in samples)}, "
              f"at the end {samples[-1].lag}")
    print(f"latency (verdict record ts - input ts): p50 {pct(lat, 50):.1f} ms, p99 "
          f"{pct(lat, 99):.1f} ms, max {max(lat, default=math.nan):.1f} ms; seen by a "
          f"read_committed reader: p50 {pct(seen, 50):.1f} ms, p99 {pct(seen, 99):.1f} ms")
    if after:
        base, end = after[0], samples[-1]
        growth = 100.0 * (end.rss - base.rss) / base.rss
        slope = (float(np.polyfit([s.t for s in after], [s.rss for s in after], 1)[0]) * 60
                 if len(after) >= 3 else math.nan)
        print(f"worker memory {base.rss:.1f} MB after warm-up ({base.t:.0f}s) -> {end.rss:.1f} MB "
              f"at {end.t:.0f}s: {growth:+.1f} % (trend {slope:+.2f} MB/min)")


def main(argv: list[str] | None = None) -> int:
    """Command line entry; Ctrl-C or SIGTERM stop the run and everything it started."""
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="length of the soak phase")
    p.add_argument("--rate-fraction", type=float, default=0.8, help="share of capacity to send")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between table rows")
    p.add_argument("--saturation-s", type=float, default=15.0,
                   help="size of the saturation burst in seconds of offline capacity (0: skip)")
    p.add_argument("--policy", choices=("threshold", "distribution"), default="distribution")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker threads")
    p.add_argument("--max-batch", type=int, default=32, help="records per transaction")
    p.add_argument("--streams", type=int, default=8, help="stream ids (record keys)")
    p.add_argument("--hostile-every", type=int, default=200,
                   help="every n-th input is malformed (0: none)")
    p.add_argument("--calibration-images", type=int, default=300)
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    if not (args.minutes > 0 and 0 < args.rate_fraction <= 1.5 and args.sample_s > 0):
        p.error("--minutes and --sample-s must be positive, --rate-fraction in (0, 1.5]")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130
    except (SoakError, broker.BrokerError) as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
