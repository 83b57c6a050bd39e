"""Worker speed through Kafka beside the offline verifier: end-to-end throughput at saturation
with 1 and 2 workers (and as a share of the same logic offline), latency percentiles at half
load, and the Kafka + codec overhead. Prints figures and the load average of each run (the
machine may be shared); asserts nothing.

    python -m bench.worker [--models fnn-3x30-relu,cnn-6-16-128-relu] [--n 400]
                           [--half-load-s 20] [--bootstrap HOST:PORT]

Latency is from the send to the moment a read_committed reader has the verdict; the reader asks
the broker to hold empty fetches 10 ms at most (with kafka-python's 500 ms default, a verdict on
a partition left out of the fetch in flight would wait for it, and the reader, not the worker,
would set the tail). Each model gets a quick profile (calibrated on other images) unless
models/<name>.profile.json exists. Without --bootstrap a local broker is started (and stopped)
for the run. Workers run as `radiusguard serve` subprocesses with 2 verifier threads in all: one
worker x 2 threads, or two workers x 1 thread, the same budget as score_many(jobs=2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from verifier.onnx.importer import load_onnx  # noqa: E402
from verifier.score import plan_for, radius_result, score_many  # noqa: E402
from verifier.walk import Plan  # noqa: E402
from worker.calibrate import calibrate
from worker.formats.codec import encode_input  # noqa: E402
from worker.local import broker  # noqa: E402
from worker.processor import Processor, Record, Scorer, process_all  # noqa: E402
from worker.profile import load_profile, save_profile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 8
PARTITIONS = 4
HALF_LOAD_S = 20.0


@dataclass
class Run:
    """One measurement through Kafka."""

    workers: int
    inputs: int
    seconds: float
    latencies: list[float]
    cpu: float  # seconds of worker CPU (all threads) from the first send to the last verdict
    batch: float  # mean records per committed transaction (the workers' own metrics)
    load: float  # 1-minute load average at the end of the run

    @property
    def rate(self) -> float:
        """Inputs per second from the first send to the last verdict."""
        return self.inputs / self.seconds

    def pct(self, q: float) -> float:
        """Latency percentile in ms (nearest rank)."""
        ms = sorted(1000.0 * x for x in self.latencies)
        return ms[min(len(ms) - 1, int(round(q / 100.0 * (len(ms) - 1))))]


@dataclass
class Offline:
    """A measurement without Kafka: inputs/s and CPU seconds per input (this process)."""

    rate: float
    cpu_per_input: float


def timed(fn, n: int) -> Offline:
    """Run fn() once and measure it (wall clock and this process's CPU, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return Offline(n / (time.perf_counter() - t0), (time.process_time() - c0) / n)


def offline(znet: Plan, xs: np.ndarray) -> tuple[Offline, float]:
    """score_many with jobs=2, and the median seconds of one certified radius."""
    flat = xs.reshape(len(xs), -1) / 255.0
    score_many(znet, flat[:4], jobs=2)  # load the compiled kernels
    radii = timed(lambda: score_many(znet, flat, jobs=2), len(flat))
    one = []
    for x in flat[:100]:
        t0 = time.perf_counter()
        radius_result(znet, x)
        one.append(time.perf_counter() - t0)
    return radii, statistics.median(one)


def offline_processor(znet: Plan, profile: Path, xs: np.ndarray) -> Offline:
    """The worker's own batch logic without Kafka: decode, radius (2 threads), Algorithm 2,
    verdict; the same streams, partitions and batches of 32."""
    prof = load_profile(profile)
    v = prof.verifier
    scorer = Scorer(znet, v, jobs=2)
    try:
        proc = Processor(znet, prof, "distribution", scorer)
        records = []
        for i, x in enumerate(xs):
            key, value = encode_input(f"x{i}", x, stream=f"s{i % STREAMS}", dtype="uint8")
            records.append(Record("in", i % PARTITIONS, i, key, value))
        process_all(proc, records[:8])
        return timed(lambda: process_all(proc, records, batch=32), len(records))
    finally:
        scorer.close()


def profile_for(name: str, model: Path, tmp: Path) -> Path:
    """The shipped profile of a model, or a quick one fitted on 120 other test images."""
    shipped = ROOT / "models" / f"{name}.profile.json"
    if shipped.is_file():
        return shipped
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    prof = calibrate(load_onnx(model), data["x"][-120:], data["y"][-120:], 0.03, window_size=30,
                     jobs=2, policy="distribution")
    path = tmp / f"{name}.profile.json"
    save_profile(prof, path)
    return path


class Workers:
    """`radiusguard serve` subprocesses of one group, stopped on exit."""

    def __init__(self, bootstrap: str, model: Path, profile: Path, topic: str, out: str,
                 count: int, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []
        group = f"bench-{uuid.uuid4().hex[:8]}"
        for i in range(count):
            port = broker.free_port()
            cmd = [sys.executable, "-m", "worker.cli", "serve", "--bootstrap", bootstrap,
                   "--model", str(model), "--profile", str(profile), "--policy", "distribution",
                   "--input-topic", topic, "--output-topic", out, "--group", group,
                   "--worker-id", f"{group}-{i}", "--jobs", str(max(1, 2 // count)),
                   "--metrics-port", str(port), "--log-level", "warning"]
            with open(log_dir / f"{group}-{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            self.ports.append(port)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until every worker reports ready for a second in a row (the group has settled)."""
        deadline = time.monotonic() + timeout
        since = None
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with code {p.returncode}")
            if all(_ready(port) for port in self.ports):
                since = since or time.monotonic()
                if time.monotonic() - since >= 1.0:
                    return
            else:
                since = None
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready")
            time.sleep(0.2)

    def cpu(self) -> float:
        """CPU seconds the running workers have used so far (Linux /proc; 0 elsewhere)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return total

    def mean_batch(self) -> float:
        """Mean records per committed transaction over all workers, from their /metrics."""
        total = count = 0.0
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("radiusguard_batch_size_sum "):
                    total += float(line.split()[1])
                elif line.startswith("radiusguard_batch_size_count "):
                    count += float(line.split()[1])
        return total / count if count else float("nan")

    def stop(self) -> None:
        """SIGTERM every worker (they commit and leave), SIGKILL after 30 s."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def through_kafka(bootstrap: str, model: Path, profile: Path, xs: np.ndarray, workers: int,
                  rate: float | None, log_dir: Path) -> Run:
    """Send xs over STREAMS streams (at `rate` inputs/s, or all at once) and time the verdicts."""
    run = uuid.uuid4().hex[:8]
    topic, out = f"bench-{run}.in", f"bench-{run}.out"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics({t: {"num_partitions": PARTITIONS, "replication_factor": -1}
                         for t in (topic, out)}, wait_for_metadata=True)
    admin.close()
    records = [
        encode_input(f"x{i}", x, stream=f"s{i % STREAMS}", dtype="uint8") for i, x in
        enumerate(xs)
    ]  # uint8 on the wire, as a camera would send them
    group = Workers(bootstrap, model, profile, topic, out, workers, log_dir)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             isolation_level="read_committed", enable_auto_commit=False,
                             fetch_max_wait_ms=10)  # see the module docstring
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    try:
        group.wait_ready()
        tps = [TopicPartition(out, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        consumer.poll(timeout_ms=100)
        sent: dict[str, float] = {}

        def send() -> None:
            t0 = time.monotonic()
            for i, (key, value) in enumerate(records):
                if rate:
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sent[f"x{i}"] = time.monotonic()
                producer.send(topic, key=key, value=value)
            producer.flush()

        thread = threading.Thread(target=send, daemon=True)
        cpu0 = group.cpu()
        start = time.monotonic()
        thread.start()
        latencies: list[float] = []
        done = 0
        last = start
        deadline = start + 600
        while done < len(records) and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=200).values():
                now = time.monotonic()
                for m in msgs:
                    rid = msgpack.unpackb(m.value, raw=False)["id"]
                    if rid in sent:
                        latencies.append(now - sent[rid])
                    done += 1
                    last = now
        cpu = group.cpu() - cpu0
        thread.join()
        return Run(workers, done, last - start, latencies, cpu, group.mean_batch(),
                   os.getloadavg()[0])
    finally:
        producer.close()
        consumer.close()
        group.stop()


def bench_model(name: str, n: int, bootstrap: str, tmp: Path, half_load_s: float) -> None:
    """Offline and through-Kafka figures of one model, printed as a small table."""
    model = ROOT / "models" / f"{name}.onnx"
    znet = plan_for(load_onnx(model))
    xs = np.load(ROOT / "models" / "mnist_test_1000.npz")["x"][:n]
    profile = profile_for(name, model, tmp)
    radii, radius_s = offline(znet, xs)
    logic = offline_processor(znet, profile, xs)
    print(f"\n{name}: {n} MNIST test images, {STREAMS} streams over {PARTITIONS} partitions, "
          f"distribution policy (load average {os.getloadavg()[0]:.1f})")
    print(f"  offline score_many(jobs=2):  {radii.rate:7.1f} inputs/s, "
          f"{1000 * radii.cpu_per_input:6.2f} CPU ms/input; median certified radius "
          f"{1000 * radius_s:.1f} ms")
    print(f"  offline worker logic (no Kafka):  {logic.rate:7.1f} inputs/s, "
          f"{1000 * logic.cpu_per_input:6.2f} CPU ms/input (decode, radii, Algorithm 2, verdicts)")
    print(f"  {'workers':>7} {'inputs/s':>9} {'offline':>7} {'CPU ms/in':>9} "
          f"{'Kafka overhead':>15} {'batch':>5} {'half load':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'p99/radius':>10} {'batch':>5} {'load':>9}")
    for workers in (1, 2):
        sat = through_kafka(bootstrap, model, profile, xs, workers, None, tmp)
        half_rate = sat.rate / 2
        k = int(max(50, half_rate * half_load_s))  # inputs cycled to last half_load_s seconds
        half = through_kafka(bootstrap, model, profile, np.resize(xs, (k, *xs.shape[1:])),
                             workers, half_rate, tmp)
        cpu_in = sat.cpu / sat.inputs
        wall = 100.0 * (1.0 - sat.rate / logic.rate)
        cpu = 100.0 * (1.0 - logic.cpu_per_input / cpu_in) if cpu_in > 0 else float("nan")
        print(f"  {workers:7d} {sat.rate:9.1f} {100 * sat.rate / logic.rate:6.1f}% "
              f"{1000 * cpu_in:9.2f} {cpu:6.1f}% /{wall:6.1f}% {sat.batch:5.1f} "
              f"{half_rate:8.1f}/s {half.pct(50):7.1f} {half.pct(99):7.1f} "
              f"{half.pct(99) / 1000 / radius_s:9.1f}x {half.batch:5.1f} "
              f"{sat.load:4.1f}/{half.load:4.1f}")
    print("  offline: saturated throughput as a share of the worker logic offline; Kafka "
          "overhead: throughput lost at\n  saturation to Kafka, the codec and the transactions, "
          "from CPU per input (robust to other load) / from\n  wall-clock inputs/s, against the "
          "worker logic offline; batch: mean records per transaction; p99/radius:\n  p99 "
          "send-to-committed-verdict latency at half the saturated rate over the median "
          "certified-radius time;\n  load: 1-minute load average after the saturated / "
          "half-load run (2 cores: above 2, other jobs take CPU)")


def main() -> None:
    """Start (or use) a broker and benchmark each model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fnn-3x30-relu,cnn-6-16-128-relu")
    parser.add_argument("--n", type=int, default=400, help="inputs per saturation run")
    parser.add_argument("--half-load-s", type=float, default=HALF_LOAD_S,
                        help="seconds of input at half load (more: steadier p99)")
    parser.add_argument("--bootstrap", help="a running broker (default: start a local one)")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if (ROOT / "models" / f"{m}.onnx").is_file()]
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp, \
            contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            cfg = broker.BrokerConfig(port=broker.free_port(), data_dir=Path(tmp) / "broker",
                                      jar_cache=ROOT / ".cache" / "kafka" / "libs")
            bootstrap = broker.start(cfg)
            stack.callback(broker.stop, cfg)
        print(f"broker {bootstrap}; {os.cpu_count()} cores; load average "
              f"{os.getloadavg()[0]:.1f} at start")
        for name in names:
            bench_model(name, args.n, bootstrap, Path(tmp), args.half_load_s)


if __name__ == "__main__":
    main()
