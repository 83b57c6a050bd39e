"""The ``radiusguard study`` subcommand: run the paper's empirical study from a TOML config."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from study.certified.cli import register as register_train
from worker.argtypes import positive_int


def cmd_study(args: argparse.Namespace) -> int:
    """Run the study of ``--config`` into ``--out`` and print where the report is."""
    from study.run import load_config, run_study, select_networks

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)  # its per-batch success lines are noise
    config = load_config(args.config, n=args.n, data=args.data)
    if args.jobs:
        config = replace(config, jobs=args.jobs)
    if args.torch_threads:
        config = replace(config, torch_threads=args.torch_threads)
    if args.networks:
        config = select_networks(config, [n.strip() for n in args.networks.split(",")])
    t0 = time.perf_counter()
    report = run_study(config, args.out, use_cache=not args.no_cache)
    print(f"wrote {report} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(report)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study`` subcommand to a ``radiusguard`` argparse subparsers object."""
    p = subparsers.add_parser(
        "study", help="the paper's empirical study (radii per category, tables, ROC, figures)"
    )
    p.add_argument("--config", required=True, type=Path, help="study TOML, e.g. "
                   "study/configs/quick.toml")
    p.add_argument("--out", required=True, type=Path, help="output directory (report, cache)")
    p.add_argument("--n", type=positive_int, help="inputs per category and selection "
                   "(overrides the config)")
    p.add_argument("--networks", help="comma-separated subset of the config's networks")
    p.add_argument("--data", help="test data (overrides the config): mnist, cifar10:DIR or an "
                   "NPZ with uint8 x and labels y")
    p.add_argument("--jobs", type=positive_int, help="radius threads (overrides the config)")
    p.add_argument("--torch-threads", type=positive_int,
                   help="threads of training and attacks (overrides the config)")
    p.add_argument("--no-cache", action="store_true", help="recompute everything")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    p.set_defaults(func=cmd_study)
    register_train(subparsers)


def main(argv: list[str] | None = None) -> int:
    """``python -m study.cli --config ... --out ...`` without the radiusguard entry point."""
    parser = argparse.ArgumentParser(prog="python -m study.cli")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["study", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
