"""Local single-node Apache Kafka broker (KRaft combined mode) for tests and the demo.

Jars come from Maven Central via ``worker/local/kafka/pom.xml`` into a jar cache; the broker
runs as a detached ``java kafka.Kafka`` process whose state (config, logs, pid file) lives in
``data_dir``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from worker.paths import broker_data_dir, jar_cache_dir

__all__ = [
    "DEFAULT_JVM_OPTS",
    "BrokerConfig",
    "BrokerError",
    "ensure_jars",
    "free_port",
    "kill",
    "start",
    "status",
    "stop",
]

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"

_PID_FILE = "broker.pid"
_LOG_FILE = "broker.log"
_PROPS_FILE = "server.properties"
_LOG_DIRS = "logs"
_JARS_MARKER = ".complete"
_MAIN_CLASS = "kafka.Kafka"
# Small heap; C1-only JIT + serial GC start ~30% faster and leave CPU to the tests on 2 cores.
DEFAULT_JVM_OPTS: tuple[str, ...] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class BrokerError(RuntimeError):
    """A local broker could not be provisioned, started or stopped; the message is for humans."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the local broker runs; ``extra_properties`` override server.properties."""

    port: int = 9092
    controller_port: int | None = None  # None: port + 1 if free, else any free port
    data_dir: Path = field(default_factory=broker_data_dir)
    jar_cache: Path = field(default_factory=jar_cache_dir)
    host: str = "127.0.0.1"
    num_partitions: int = 4
    extra_properties: dict[str, str] = field(default_factory=dict)
    jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTS

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it; racy but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- jars


def ensure_jars(cfg: BrokerConfig) -> Path:
    """Populate ``cfg.jar_cache`` with the broker jars via Maven (once); return the cache dir."""
    libs = cfg.jar_cache.resolve()
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if _jars_ready(libs, digest):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven ('mvn') is not on PATH; it is needed once to download the Kafka jars "
            f"into {libs}. Install Maven 3.8+ (and Java 17+)."
        )
    _require_java()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(libs.parent / f".{libs.name}.lock"):
        if _jars_ready(libs, digest):  # another process finished while we waited
            return libs
        staging = Path(tempfile.mkdtemp(prefix=f".{libs.name}-", dir=libs.parent))
        try:
            cmd = [
                mvn, "-q", "-B", "-f", str(POM),
                "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
            ]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired as exc:
                raise BrokerError("Maven timed out downloading the Kafka jars") from exc
            if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                out = _tail_text((proc.stdout or "") + (proc.stderr or ""), 30)
                raise BrokerError(
                    f"Maven could not resolve the Kafka jars from {POM} "
                    f"(exit {proc.returncode}). Is Maven Central reachable?\n{out}"
                )
            (staging / _JARS_MARKER).write_text(digest + "\n")
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def _jars_ready(libs: Path, digest: str) -> bool:
    marker = libs / _JARS_MARKER
    return marker.is_file() and marker.read_text().strip() == digest


def _require_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise BrokerError("Java ('java') is not on PATH; the local Kafka broker needs Java 17+.")
    return java


# --------------------------------------------------------------------------- lifecycle


def start(cfg: BrokerConfig, timeout: float = 90) -> str:
    """Start the broker detached (idempotent) and wait until it answers; return its bootstrap."""
    data_dir = cfg.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(data_dir / ".lock"):
        running = _running_pid(data_dir)
        if running is not None:
            bootstrap = _recorded_bootstrap(data_dir) or cfg.bootstrap
            _wait_ready(running, bootstrap, _cluster_id(data_dir), data_dir, timeout)
            return bootstrap
        (data_dir / _PID_FILE).unlink(missing_ok=True)

        java = _require_java()
        libs = ensure_jars(cfg)
        if not _wait_port_free(cfg.host, cfg.port, 2):
            raise BrokerError(
                f"port {cfg.port} on {cfg.host} is already in use by something else; "
                "stop it or choose another port"
            )
        controller_port = _controller_port(cfg)
        props = data_dir / _PROPS_FILE
        props.write_text(_server_properties(cfg, controller_port, data_dir))
        if _cluster_id(data_dir) is None:
            _format_storage(java, libs, props, data_dir)
        cluster_id = _cluster_id(data_dir)

        log_path = data_dir / _LOG_FILE
        with log_path.open("ab") as log:
            log.write(f"\n==== radiusguard: starting broker at {time.ctime()} ====\n".encode())
        argv = [
            java, *cfg.jvm_options, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={data_dir}", "-cp", f"{libs}/*", _MAIN_CLASS, str(props),
        ]  # fmt: skip
        pid = _spawn_detached(argv, log_path)
        (data_dir / _PID_FILE).write_text(f"{pid}\n")
        _wait_ready(pid, cfg.bootstrap, cluster_id, data_dir, timeout)
        return cfg.bootstrap


def stop(cfg: BrokerConfig, timeout: float = 30) -> bool:
    """Stop the broker (SIGTERM, then SIGKILL after ``timeout``); False if it was not running."""
    data_dir = cfg.data_dir.resolve()
    pid = _running_pid(data_dir)
    if pid is None:
        (data_dir / _PID_FILE).unlink(missing_ok=True)
        return False
    _signal(pid, signal.SIGTERM)
    if not _wait_dead(pid, timeout):
        _signal(pid, signal.SIGKILL)
        if not _wait_dead(pid, 10):
            raise BrokerError(f"broker pid {pid} survived SIGKILL; see {data_dir / _LOG_FILE}")
    (data_dir / _PID_FILE).unlink(missing_ok=True)
    return True


def kill(cfg: BrokerConfig) -> bool:
    """SIGKILL the broker (a crash, for recovery tests); False if it was not running."""
    data_dir = cfg.data_dir.resolve()
    pid = _running_pid(data_dir)
    if pid is None:
        return False
    _signal(pid, signal.SIGKILL)
    if not _wait_dead(pid, 10):
        raise BrokerError(f"broker pid {pid} survived SIGKILL")
    (data_dir / _PID_FILE).unlink(missing_ok=True)
    return True


def status(cfg: BrokerConfig) -> str | None:
    """Return the bootstrap of the broker in ``cfg.data_dir`` if it runs and answers, else None."""
    data_dir = cfg.data_dir.resolve()
    if _running_pid(data_dir) is None:
        return None
    bootstrap = _recorded_bootstrap(data_dir) or cfg.bootstrap
    return bootstrap if _answers(bootstrap, _cluster_id(data_dir)) else None


# --------------------------------------------------------------------------- helpers


def _server_properties(cfg: BrokerConfig, controller_port: int, data_dir: Path) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{cfg.host}:{controller_port}",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / _LOG_DIRS),
        "num.partitions": str(cfg.num_partitions),
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a crash (SIGKILL) the restarted node must wait out its old registration's
        # session (default 9 s, DUPLICATE_BROKER_REGISTRATION until then); shorten that.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "5000",
        "log.retention.hours": "24",
    }
    props.update(cfg.extra_properties)
    lines = ["# Written by worker/local/broker.py on every start; edits are overwritten."]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _format_storage(java: str, libs: Path, props: Path, data_dir: Path) -> None:
    cluster_id = _new_cluster_id()
    cmd = [
        java, "-Xmx256m", "-XX:TieredStopAtLevel=1", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp", f"{libs}/*",
        "kafka.tools.StorageTool", "format", "--config", str(props), "--cluster-id", cluster_id,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError("formatting the broker storage timed out") from exc
    if proc.returncode != 0:
        out = _tail_text(proc.stdout + proc.stderr, 20)
        raise BrokerError(f"formatting broker storage in {data_dir} failed:\n{out}")


def _new_cluster_id() -> str:
    """A Kafka-style Uuid string (URL-safe base64, no padding) that cannot look like a flag."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _cluster_id(data_dir: Path) -> str | None:
    meta = data_dir / _LOG_DIRS / "meta.properties"
    if not meta.is_file():
        return None
    for line in meta.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cluster.id":
            return value.strip()
    return None


def _recorded_bootstrap(data_dir: Path) -> str | None:
    """The PLAINTEXT address from the server.properties the running broker was started with."""
    props = data_dir / _PROPS_FILE
    if not props.is_file():
        return None
    for line in props.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "advertised.listeners":
            for listener in value.split(","):
                name, _, addr = listener.strip().partition("://")
                if name == "PLAINTEXT":
                    return addr
    return None


def _controller_port(cfg: BrokerConfig) -> int:
    if cfg.controller_port is not None:
        if not _wait_port_free(cfg.host, cfg.controller_port, 2):
            raise BrokerError(f"controller port {cfg.controller_port} is already in use")
        return cfg.controller_port
    if cfg.port + 1 <= 65535 and _port_free(cfg.host, cfg.port + 1):
        return cfg.port + 1
    return free_port(cfg.host)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_port_free(host: str, port: int, timeout: float) -> bool:
    """A just-stopped broker's sockets can outlive its pid by a moment; allow for that."""
    deadline = time.monotonic() + timeout
    while not _port_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _spawn_detached(argv: list[str], log_path: Path) -> int:
    """posix_spawn in a new session with output to ``log_path``; no Popen object to warn or reap."""
    file_actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=file_actions,
                              setsid=True)  # fmt: skip
    except OSError as exc:
        raise BrokerError(f"could not launch {argv[0]}: {exc}") from exc


def _wait_ready(
    pid: int, bootstrap: str, cluster_id: str | None, data_dir: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _pid_alive(pid):
            (data_dir / _PID_FILE).unlink(missing_ok=True)
            raise BrokerError(
                f"Kafka broker exited during startup; last lines of {data_dir / _LOG_FILE}:\n"
                + _tail_file(data_dir / _LOG_FILE)
            )
        if _answers(bootstrap, cluster_id):
            return
        if time.monotonic() >= deadline:
            _signal(pid, signal.SIGKILL)
            _wait_dead(pid, 10)
            (data_dir / _PID_FILE).unlink(missing_ok=True)
            raise BrokerError(
                f"Kafka broker did not answer on {bootstrap} within {timeout:.0f}s (killed it); "
                f"last lines of {data_dir / _LOG_FILE}:\n" + _tail_file(data_dir / _LOG_FILE)
            )
        time.sleep(0.3)


def _answers(bootstrap: str, cluster_id: str | None) -> bool:
    """True if a metadata request to ``bootstrap`` lists a broker of cluster ``cluster_id``."""
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            pass
    except OSError:
        return False
    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="radiusguard-broker-probe",
            bootstrap_timeout_ms=3000,
            request_timeout_ms=3000,
            reconnect_backoff_max_ms=500,
        )
        meta = admin.describe_cluster()
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    if not meta.get("brokers"):
        return False
    return cluster_id is None or meta.get("cluster_id") == cluster_id


def _running_pid(data_dir: Path) -> int | None:
    """The pid from the pid file if that process is alive and is our broker, else None."""
    try:
        pid = int((data_dir / _PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid  # no procfs: trust the pid file
    props = str(data_dir / _PROPS_FILE).encode()
    return pid if _MAIN_CLASS.encode() in cmdline and props in cmdline else None


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is running (reaps it first if it is our exited child; zombies are dead)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (e.g. started by another process): inspect it below
    else:
        # Our child: only waitpid knows when *all* its threads (and sockets) are gone; the
        # leader thread shows as a zombie earlier while the JVM's other threads still exit.
        return done != pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise BrokerError(f"not allowed to signal broker pid {pid}: {exc}") from exc


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so concurrent starts / jar downloads do not race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no broker log)"
    return _tail_text(text, lines)


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"
