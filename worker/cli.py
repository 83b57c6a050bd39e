"""The `radiusguard` command line: radius, calibrate, serve, http, kafka, produce, record,
replay, demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from verifier.settings import DOMAIN_NAMES, SEARCHES, VerifierSettings
from worker.argtypes import (
    non_negative_float,
    port_number,
    positive_float,
    positive_int,
    unit_fraction,
)
from worker.errors import CliError
from worker.paths import broker_data_dir, jar_cache_dir
from worker.policy import POLICIES
from worker.score import add_arguments as add_score_arguments

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # zonotope passes are single-threaded BLAS


DEFAULT_FALSE_ALARM = 0.03


def _add_verifier_options(p: argparse.ArgumentParser) -> None:
    d = VerifierSettings()
    p.add_argument("--domain", choices=DOMAIN_NAMES, default=d.domain,
                   help=f"abstract domain (default {d.domain})")
    p.add_argument("--up", type=positive_float, default=d.up,
                   help=f"upper end of the search (default {d.up})")
    p.add_argument("--tol", type=positive_float, default=d.tol,
                   help=f"search tolerance (default {d.tol})")
    p.add_argument(
        "--search", choices=SEARCHES, default=d.search,
        help="secant: margin-guided, fewer passes, never below bisect; bisect: Algorithm 1 "
        f"(default {d.search})",
    )
    p.add_argument("--stages", type=_stages, default=d.stages, metavar="D1,D2,...",
                   help="sound domains that decide robustness at the budget, in order "
                   f"(default {','.join(d.stages)}; calibrate runs the cheapest order)")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="threads")


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in DOMAIN_NAMES]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct domains from {','.join(DOMAIN_NAMES)} separated by commas, "
            f"got {text!r}")
    return names


def _settings(args: argparse.Namespace) -> VerifierSettings:
    """The VerifierSettings the command-line options give."""
    return VerifierSettings(domain=args.domain, search=args.search, up=args.up, tol=args.tol,
                            stages=args.stages)


# ----------------------------------------------------------------------------- radius


def cmd_radius(args: argparse.Namespace) -> int:
    """Certified (and optionally exact) radius of every input in a file, as CSV."""
    import numpy as np

    from verifier.score import plan_for, score_many
    from worker.inputs import load_inputs
    from worker.modelfile import load_model
    from worker.progress import progress

    net = load_model(args.model)
    xs = load_inputs(args.inputs, net.input_shape)
    settings = _settings(args)
    plan = plan_for(net, settings)
    rows = []
    chunk = 16 * args.jobs
    starts = range(0, len(xs), chunk)
    for start in progress(starts, total=len(starts), desc=f"radii ({chunk} per step)"):
        part = xs[start : start + chunk]
        t0 = time.perf_counter()
        results = score_many(plan, part, settings, args.jobs)
        share = (time.perf_counter() - t0) * min(args.jobs, len(part)) / len(part)
        rows += [[start + i, r.predicted, r.radius, share] for i, r in enumerate(results)]
    if args.exact:
        from verifier.exact import exact_radius

        for row in progress(rows, total=len(rows), desc="exact radii"):
            ex = exact_radius(net, xs[row[0]], max_eps=args.up, label=row[1],
                              lower_bracket=row[2])
            row.append(ex.radius)
    header = "index,predicted,radius,seconds" + (",exact_radius" if args.exact else "")
    lines = [header] + [
        ",".join([str(r[0]), str(r[1]), f"{r[2]:.6g}", f"{r[3]:.6f}"] + [f"{v:.6g}" for v in r[4:]])
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        radii = np.array([r[2] for r in rows])
        print(f"wrote {len(rows)} radii to {args.out} (mean {radii.mean():.4f})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- kafka


def cmd_kafka(args: argparse.Namespace) -> int:
    """Start, stop or show the local single-node Apache Kafka broker."""
    from worker.local.broker import BrokerConfig, start, status, stop

    cfg = BrokerConfig(port=args.port, data_dir=Path(args.data_dir), jar_cache=Path(args.jar_cache))
    if args.action == "start":
        print(start(cfg))
    elif args.action == "stop":
        print("stopped" if stop(cfg) else "not running")
    else:
        where = status(cfg)
        print(where if where else "not running")
        return 0 if where else 1
    return 0


# ----------------------------------------------------------------------------- calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a profile (threshold, Algorithm 2 parameters, seed window) for a model."""
    from worker.calibrate import calibrate
    from worker.inputs import load_inputs
    from worker.modelfile import load_model
    from worker.profile import save_profile

    net = load_model(args.model)
    xs = load_inputs(args.valid, net.input_shape)
    labels = _load_labels(args.labels, len(xs))
    attacks = {name: load_inputs(path, net.input_shape) for name, path in args.attack}
    if len(attacks) != len(args.attack):
        raise CliError("each --attack NAME must be given once")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"{out.parent}: no such directory for --out")
    if args.budget is None and args.max_false_alarm is None:
        raise CliError("give --budget EPS (the guarantee; false alarms are measured) or "
                       "--max-false-alarm F (false alarms; the budget is measured)")
    try:
        profile = calibrate(
            net, xs, labels, window_size=args.window, attacks=attacks, settings=_settings(args),
            jobs=args.jobs, name=args.name, policy=args.policy, budget=args.budget,
            max_false_alarm=DEFAULT_FALSE_ALARM if args.max_false_alarm is None
            else args.max_false_alarm,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    save_profile(profile, out)
    cal = profile.calibration
    print(f"profile {profile.name} -> {out}")
    print(f"  valid inputs: {cal.n} of {cal.n_inputs} classified correctly, mean radius "
          f"{cal.mean_radius:.4f}")
    proved = ", ".join(f"{k} {v}" for k, v in (cal.proved_by or {}).items())
    print(f"  guaranteed budget {profile.guaranteed_budget:.6g}: false alarms "
          f"{cal.false_alarm_at_budget:.1%} of the valid inputs (proved by {proved}; stages "
          f"{','.join(profile.verifier.stages)})")
    print(f"  radius threshold {profile.threshold:.6g} (false alarms "
          f"{cal.false_alarm_measured:.1%}, target {cal.false_alarm_target:.1%})")
    fa = cal.false_alarm_distribution
    print(f"  Algorithm 2: window {profile.window_size}, sigma0 {profile.sigma0:.6g}, sigma1 "
          f"{profile.sigma1:.6g}" + ("" if fa is None else f" (false alarms {fa:.1%})"))
    for name, a in profile.attacks.items():
        print(f"  {name}: {a.n} inputs, mean radius {a.mean_radius:.4f}, rejected "
              f"{a.rejection_rate:.1%} (threshold) / {a.rejection_rate_distribution:.1%} "
              f"(Algorithm 2), AUC {a.auc:.3f}")
    return 0


def _attack_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=ADV.npy, got {text!r}")
    return name, path


def _load_labels(path: str, n: int | None = None):
    """Integer labels from .npy, or from an .npz's 'y' (or 'labels', or only) array."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: no such labels file")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                key = next((k for k in ("y", "labels") if k in data.files), data.files[0])
                labels = data[key]
        else:
            labels = np.load(p, allow_pickle=False)
    except (ValueError, OSError, IndexError) as exc:
        raise CliError(f"{p}: not a readable label array ({exc})") from None
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise CliError(f"{p}: labels must be integers, got {labels.dtype}")
    if n is not None and labels.size != n:
        raise CliError(f"{p}: {labels.size} labels for {n} inputs")
    return labels


# ----------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one worker of the consumer group until SIGTERM."""
    from worker.kafka.bootstrap import await_broker
    from worker.kafka.config import ServiceConfig, kafka_settings
    from worker.kafka.service import Service
    from worker.logs import configure_logging
    from worker.modelfile import load_model
    from worker.profile import check_settings, load_profile

    check_settings(load_profile(args.profile), domain=args.domain, search=args.search)
    configure_logging(args.log_level)
    _quiet_kafka_selector()
    load_model(args.model)  # an unreadable model is named here, before any Kafka client starts
    cfg = ServiceConfig(
        bootstrap=args.bootstrap, model=Path(args.model), profile=Path(args.profile),
        policy=args.policy, input_topic=args.input_topic, output_topic=args.output_topic,
        group=args.group, max_batch=args.max_batch, jobs=args.jobs,
        commit_interval_ms=args.commit_interval_ms,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        max_input_bytes=args.max_input_bytes, kafka=kafka_settings(args.kafka_config),
        **({"worker_id": args.worker_id} if args.worker_id else {}),
    )
    service = Service(cfg)
    await_broker(cfg, service.metrics, args.connect_timeout)  # one clear line if unreachable
    service.install_signal_handlers()
    service.run()
    return 0


def _quiet_kafka_selector() -> None:
    """kafka-python warns whenever a busy machine delays its event loop; keep real warnings."""
    import logging

    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- produce, record,
# ----------------------------------------------------------------------------- replay


def cmd_produce(args: argparse.Namespace) -> int:
    """Send an array file or a PNG folder as input records of one stream."""
    from worker.formats.recording import produce, records_from_arrays

    xs, dtype = _load_for_produce(args.inputs)
    labels = None
    if args.labels:
        labels = _load_labels(args.labels, len(xs))
    elif Path(args.inputs).suffix == ".npz":
        labels = _npz_labels(args.inputs, len(xs))
    records = records_from_arrays(
        xs, args.stream, labels, dtype=args.dtype or dtype,
        period_ms=int(round(1000 / args.rate)) if args.rate else 0, id_prefix=args.id_prefix,
    )
    producer = _producer(args)
    try:
        n = produce(producer, args.topic, records, rate=args.rate)
    finally:
        producer.close()
    print(f"sent {n} inputs of stream {args.stream!r} to {args.topic}", file=sys.stderr)
    return 0


def _load_for_produce(path: str):
    """Inputs with their item shape kept, and the wire dtype that holds them exactly."""
    import numpy as np

    from worker.inputs import InputFileError, _load_png_dir, as_unit_batch

    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file or directory")
    if p.is_dir():
        raw = _load_png_dir(p)
    else:
        try:
            if p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as data:
                    raw = data["x" if "x" in data.files else data.files[0]]
            else:
                raw = np.load(p, allow_pickle=False)
        except (ValueError, OSError, IndexError) as exc:
            raise InputFileError(f"{p}: not a readable .npy/.npz array ({exc})") from None
    if raw.ndim < 2:
        raise InputFileError(f"{p}: expected an array [N, ...] of inputs, got shape {raw.shape}")
    flat = as_unit_batch(raw, None, str(p))
    return flat.reshape(raw.shape), ("uint8" if raw.dtype == np.uint8 else "float64")


def _npz_labels(path: str, n: int):
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        if "y" not in data.files:
            return None
        y = np.asarray(data["y"]).reshape(-1)
    return y if y.size == n and np.issubdtype(y.dtype, np.integer) else None


def cmd_record(args: argparse.Namespace) -> int:
    """Read a topic from its beginning into a replay file until it is idle."""
    from kafka import KafkaConsumer, TopicPartition

    from worker.formats.recording import record_topic, write_recording
    from worker.kafka.config import client_settings, kafka_settings

    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"{out.parent}: no such directory for --out")
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", client_id="radiusguard-record",
        **client_settings(KafkaConsumer, kafka_settings(args.kafka_config)),
    )
    try:
        partitions = consumer.partitions_for_topic(args.topic)
        if not partitions:
            raise CliError(f"topic {args.topic!r} does not exist on {args.bootstrap}")
        tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = record_topic(consumer, idle_s=args.idle, limit=args.limit)
    finally:
        consumer.close()
    n = write_recording(out, records)
    print(f"recorded {n} records of {args.topic} to {out}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Send a recording to a topic at its recorded pace (times --rate), or as fast as possible."""
    from worker.formats.recording import check_recording, produce, read_recording

    check_recording(args.file)  # a truncated or malformed file is refused before sending any
    records = read_recording(args.file)
    producer = _producer(args)
    try:
        n = produce(producer, args.topic, records, speed=None if args.fast else args.rate,
                    streams=args.streams)
    finally:
        producer.close()
    print(f"replayed {n} records to {args.topic}", file=sys.stderr)
    return 0


def _producer(args: argparse.Namespace):
    from kafka import KafkaProducer

    from worker.kafka.config import client_settings, kafka_settings

    settings = client_settings(KafkaProducer, kafka_settings(args.kafka_config))
    settings.setdefault("acks", "all")
    settings.setdefault("linger_ms", 5)
    return KafkaProducer(bootstrap_servers=args.bootstrap, client_id="radiusguard-produce",
                         **settings)


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Local broker, workers, a recorded stream replayed, a verdict table."""
    from worker.local.demo import run_demo

    _quiet_kafka_selector()
    return run_demo(args)


# ----------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in the help screens (unless it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and defaults in the help screens."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        """Print one line (no usage block) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_kafka_options(p: argparse.ArgumentParser, bootstrap_required: bool = True) -> None:
    p.add_argument("--bootstrap", required=bootstrap_required,
                   help="Kafka bootstrap servers, host:port[,...]")
    p.add_argument("--kafka-config", help="JSON file of kafka-python settings (SASL/SSL, ...); "
                   "RADIUSGUARD_KAFKA_* variables override it")


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = _Parser(
        prog="radiusguard",
        description="Validate neural-network inputs by their certified robustness radius.",
    )
    parser.add_argument("--version", action="version", version=f"radiusguard {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("radius", help="certified radius of each input in a file (CSV)")
    p.add_argument("model", help="ONNX model")
    p.add_argument("inputs", help=".npy/.npz array [N, ...] in [0, 1] (uint8 is scaled by 1/255)")
    _add_verifier_options(p)
    p.add_argument("--exact", action="store_true", help="also the exact radius (MILP, small nets)")
    p.add_argument("--out", help="CSV file (default: standard output)")
    p.set_defaults(func=cmd_radius)

    p = sub.add_parser("calibrate", help="fit a validation profile for a model on valid inputs")
    p.add_argument("model", help="ONNX model")
    p.add_argument("valid", help="valid inputs: .npy/.npz [N, ...] or a folder of PNG images")
    p.add_argument("--labels", required=True, help="their labels (.npy, or .npz with 'y')")
    p.add_argument("--budget", type=non_negative_float, metavar="EPS",
                   help="the guaranteed budget: accept only inputs proved robust at EPS (the "
                   "false alarms it costs are measured and printed)")
    p.add_argument("--max-false-alarm", type=unit_fraction,
                   help="largest share of valid inputs to reject, e.g. 0.03: the budget is the "
                   "largest that keeps to it (with --budget: the share Algorithm 2 and the "
                   f"consistency policy are fitted to; default {DEFAULT_FALSE_ALARM})")
    p.add_argument("--attack", type=_attack_spec, action="append", default=[],
                   metavar="NAME=ADV.npy", help="adversarial inputs to score (repeatable)")
    p.add_argument("--window", type=_window_size, default=50, help="Algorithm 2 window size")
    p.add_argument("--policy", choices=tuple(POLICIES), default="threshold",
                   help="the profile's default policy")
    p.add_argument("--name", help="profile name (default: the model file's stem)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    _add_verifier_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("score", help="a profile's verdicts for a file of inputs, offline (CSV)")
    add_score_arguments(p)

    p = sub.add_parser("kafka", help="a local single-node Apache Kafka broker (KRaft)")
    p.add_argument("action", choices=("start", "stop", "status"),
                   help="start (prints host:port), stop, or status (exit 1: not running)")
    p.add_argument("--port", type=port_number, default=9092, help="the broker's client port")
    p.add_argument("--data-dir", default=str(broker_data_dir("broker")),
                   help="the broker's state (config, logs, pid); RADIUSGUARD_CACHE_DIR or "
                   "XDG_CACHE_HOME moves the default")
    p.add_argument("--jar-cache", default=str(jar_cache_dir()),
                   help="where Maven puts the broker's jars (downloaded once)")
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("serve", help="run a validation worker (a consumer-group member)")
    _add_kafka_options(p)
    p.add_argument("--model", required=True, help="ONNX model")
    p.add_argument("--profile", required=True, help="profile.json from `radiusguard calibrate`")
    p.add_argument("--policy", choices=tuple(POLICIES),
                   help="default: the profile's policy")
    p.add_argument("--domain", choices=DOMAIN_NAMES,
                   help="expected domain; refused unless the profile was calibrated with it")
    p.add_argument("--search", choices=SEARCHES,
                   help="expected radius search; refused unless the profile's")
    p.add_argument("--input-topic", default="radiusguard.inputs",
                   help="topic of input records (must exist)")
    p.add_argument("--output-topic", default="radiusguard.verdicts",
                   help="topic of verdicts (created if missing)")
    p.add_argument("--group", default="radiusguard", help="consumer group id")
    p.add_argument("--worker-id", help="stable id of this worker (default: host-pid)")
    p.add_argument("--max-batch", type=positive_int, default=32,
                   help="records scored together (a transaction takes those scored meanwhile)")
    p.add_argument("--commit-interval-ms", type=positive_int, default=20,
                   help="shortest time between transaction starts (latency against CPU)")
    p.add_argument("--max-input-bytes", type=positive_int, default=1 << 20,
                   help="larger input records are invalid")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="threads")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    p.add_argument("--metrics-port", type=port_number,
                   help="serve /metrics, /healthz, /readyz here (default: no metrics server)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level (JSON lines on stderr)")
    p.add_argument("--connect-timeout", type=positive_float, default=30.0,
                   help="seconds to wait for the broker to accept connections at start")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("produce", help="send an array file or PNG folder as one input stream")
    p.add_argument("inputs", help=".npy/.npz array [N, ...] in [0, 1] (or uint8), or a folder "
                   "of PNG images")
    p.add_argument("--stream", required=True, help="stream id (the record key), e.g. cam-1")
    p.add_argument("--rate", type=positive_float, help="inputs per second (default: at once)")
    p.add_argument("--labels", help="labels to attach (.npy, or .npz with 'y')")
    p.add_argument("--topic", default="radiusguard.inputs", help="topic to send to")
    p.add_argument("--dtype", choices=("uint8", "float32", "float64"),
                   help="wire dtype (default: uint8 for uint8 data and PNG, else float64)")
    p.add_argument("--id-prefix", help="input ids are PREFIX-i (default: the stream id)")
    _add_kafka_options(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("record", help="record a topic into a replay file (.rgr)")
    p.add_argument("--topic", required=True, help="topic to read from its beginning")
    p.add_argument("--out", required=True, help="replay file to write")
    p.add_argument("--idle", type=positive_float, default=5.0,
                   help="stop after this many seconds without a new record")
    p.add_argument("--limit", type=positive_int, help="stop after this many records")
    _add_kafka_options(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="send a replay file's records to a topic")
    p.add_argument("file", help="replay file (.rgr) from `radiusguard record`")
    p.add_argument("--topic", required=True, help="topic to send to")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=positive_float, default=1.0,
                      help="speed as a multiple of the recorded pace")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    p.add_argument("--streams", type=positive_int, default=1,
                   help="fan each record out to N streams (keys suffixed -0 .. -N-1)")
    _add_kafka_options(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="local broker, two workers, a recorded stream, a verdict "
                       "table")
    from worker.local.demo import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("http", help="serve verdicts over the Open Inference Protocol v2 (REST)")
    from worker.http.server import add_arguments as add_http_arguments
    from worker.http.server import run as run_http

    add_http_arguments(p)
    p.set_defaults(func=run_http)

    from worker.recheck import register as register_recheck
    from worker.verify import register as register_verify

    register_verify(sub)
    register_recheck(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radiusguard")
    except PackageNotFoundError:
        return "(not installed)"


def _window_size(text: str) -> int:
    value = positive_int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"the window needs at least 8 radii, got {text!r}")
    return value


def _extra_commands() -> tuple:
    """Subcommands other packages add: `study` when study/cli.py is installed (its module
    imports nothing heavy; torch loads only when the command runs)."""
    import importlib.util

    try:
        if importlib.util.find_spec("study.cli") is None:
            return ()
    except ImportError:
        return ()
    try:
        from study.cli import register
    except ImportError:
        return ()
    return (register,)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; errors become one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("radiusguard: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # shown as one line; details are in the exception's message
        if os.environ.get("RADIUSGUARD_DEBUG"):
            raise
        if not _is_user_error(exc):
            raise
        print(f"radiusguard {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _is_user_error(exc: Exception) -> bool:
    names = {
        "UnsupportedModelError", "InputFileError", "ProfileError", "BrokerError", "CliError",
        "ConfigError", "FileNotFoundError", "IsADirectoryError", "PermissionError",
        "NoBrokersAvailable", "ReplayFileError", "ServiceError", "DemoError",
        "KafkaTimeoutError", "KafkaConnectionError", "VerifierMemoryError", "RecheckError",
    }
    return any(cls.__name__ in names for cls in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
