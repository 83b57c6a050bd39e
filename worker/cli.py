"""The `radiusguard` command line: radius, calibrate, serve, kafka, produce, record, replay,
demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # zonotope passes are single-threaded BLAS


class CliError(Exception):
    """An error to show the user as one line, without a traceback."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _add_verifier_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--up", type=_positive_float, default=0.256, help="upper end of the search")
    p.add_argument("--tol", type=_positive_float, default=0.001, help="search tolerance")
    p.add_argument(
        "--search", choices=("secant", "bisect"), default="secant",
        help="secant: margin-guided, fewer passes, never below bisect; bisect: Algorithm 1",
    )
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="threads")


# ----------------------------------------------------------------------------- radius


def cmd_radius(args: argparse.Namespace) -> int:
    """Certified (and optionally exact) radius of every input in a file, as CSV."""
    import numpy as np

    from verifier.network import load_onnx
    from verifier.radius import radius_result
    from verifier.zonotope import ZonoNet
    from worker.inputs import load_inputs
    from worker.progress import progress

    net = load_onnx(args.model)
    xs = load_inputs(args.inputs, net.input_size)
    znet = ZonoNet.of(net)
    rows = []
    exact = None
    if args.exact:
        from verifier.exact import exact_radius

        exact = exact_radius
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> list:
        t0 = time.perf_counter()
        res = radius_result(znet, xs[i], args.up, args.tol, args.search)
        row = [i, res.predicted, res.radius, time.perf_counter() - t0]
        if exact is not None:
            ex = exact(net, xs[i], max_eps=args.up, label=res.predicted, lower_bracket=res.radius)
            row.append(ex.radius)
        return row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in progress(pool.map(one, range(len(xs))), total=len(xs), desc="radii"):
            rows.append(row)
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
    from worker.broker import BrokerConfig, start, status, stop

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


# ----------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one worker of the consumer group until SIGTERM."""
    from worker.config import ServiceConfig, kafka_settings
    from worker.logs import configure_logging
    from worker.service import Service

    configure_logging(args.log_level)
    cfg = ServiceConfig(
        bootstrap=args.bootstrap, model=Path(args.model), profile=Path(args.profile),
        policy=args.policy, input_topic=args.input_topic, output_topic=args.output_topic,
        group=args.group, max_batch=args.max_batch, jobs=args.jobs,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        kafka=kafka_settings(args.kafka_config),
        **({"worker_id": args.worker_id} if args.worker_id else {}),
    )
    service = Service(cfg)
    service.install_signal_handlers()
    service.run()
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(
        prog="radiusguard",
        description="Validate neural-network inputs by their certified robustness radius.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("radius", help="certified radius of each input in a file (CSV)")
    p.add_argument("model", help="ONNX model")
    p.add_argument("inputs", help=".npy/.npz array [N, ...] in [0, 1] (uint8 is scaled by 1/255)")
    _add_verifier_options(p)
    p.add_argument("--exact", action="store_true", help="also the exact radius (MILP, small nets)")
    p.add_argument("--out", help="CSV file (default: standard output)")
    p.set_defaults(func=cmd_radius)

    p = sub.add_parser("kafka", help="a local single-node Apache Kafka broker (KRaft)")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--port", type=_positive_int, default=9092)
    p.add_argument("--data-dir", default=".cache/kafka/broker")
    p.add_argument("--jar-cache", default=".cache/kafka/libs")
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("serve", help="run a validation worker (a consumer-group member)")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,...]")
    p.add_argument("--model", required=True, help="ONNX model")
    p.add_argument("--profile", required=True, help="profile.json from `radiusguard calibrate`")
    p.add_argument("--policy", choices=("threshold", "distribution"), default="distribution")
    p.add_argument("--input-topic", default="radiusguard.inputs")
    p.add_argument("--output-topic", default="radiusguard.verdicts")
    p.add_argument("--group", default="radiusguard", help="consumer group id")
    p.add_argument("--worker-id", help="stable id of this worker (default: host-pid)")
    p.add_argument("--max-batch", type=_positive_int, default=32, help="records per transaction")
    p.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1, help="threads")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz here")
    p.add_argument("--kafka-config", help="JSON file of kafka-python settings (SASL/SSL, ...)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


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
        "NoBrokersAvailable", "ReplayFileError",
    }
    return any(cls.__name__ in names for cls in type(exc).__mro__)


if __name__ == "__main__":
    sys.exit(main())
