"""`radiusguard score`: a profile's policy applied offline to a file of inputs, as one stream.

The inputs go through the worker's own broker-free path: each becomes an input record
(float64, lossless), and worker.processor's Processor decodes, verifies and validates them in
order with the stream's window carried over, exactly as a worker would. Policies the
Processor does not run itself take its radii and decide with the policy registry.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from worker.errors import CliError
from worker.policy import POLICIES, Signals, logit_margins, make_validator

__all__ = ["COLUMNS", "Scored", "add_arguments", "cmd_score", "score_inputs"]

COLUMNS = ("index", "predicted", "radius", "verdict", "rule", "pvalue", "score", "eps", "proved",
           "stage", "verifier_version", "model_sha256", "preprocessing")
STREAM = "score"


@dataclass(frozen=True)
class Scored:
    """One input's verdict: CSV row data."""

    index: int
    predicted: int | None
    radius: float | None
    verdict: str
    rule: str
    pvalue: float | None
    score: float | None = None
    eps: float | None = None
    proved: int | None = None
    stage: str | None = None
    verifier_version: int | None = None
    model_sha256: str | None = None
    preprocessing: str | None = None


def score_inputs(
    model: str | Path, inputs: str | Path, profile_path: str | Path, policy: str | None = None,
    jobs: int = 1, batch: int = 32,
) -> list[Scored]:
    """Verdicts of the inputs of a file, in order, under the profile's policy (or `policy`)."""
    from verifier.onnx.importer import load_onnx
    from verifier.score import plan_for
    from worker.formats.codec import encode_input
    from worker.inputs import load_inputs
    from worker.processor import Processor, Record, Scorer, process_all
    from worker.profile import check_model, load_profile

    profile = load_profile(profile_path)
    net = load_onnx(model)
    check_model(profile, net)
    xs = load_inputs(inputs, net.input_shape)  # checks the layout; channels last is transposed
    validator = make_validator(profile, policy)  # checks the name and the profile's parameters
    znet = plan_for(net, profile.verifier)
    v = profile.verifier
    scorer = Scorer(znet, v, jobs)
    try:
        processor = Processor(znet, profile, validator.name, scorer, worker_id="score")
        records = [
            Record("score", 0, i, *encode_input(str(i), x, stream=STREAM, dtype="float64"))
            for i, x in enumerate(xs)
        ]
        verdicts = [v for _, v in process_all(processor, records, batch=batch).verdicts]
    finally:
        scorer.close()
    scores: list[float | None] = [None] * len(xs)
    if validator.needs_margin:  # a stateless score of (radius, margin): shown beside the verdict
        margins = logit_margins(net.forward(xs))
        scores = [None if v.radius is None else
                  validator.step(None, Signals(v.radius, float(m)), i)[0].score
                  for i, (v, m) in enumerate(zip(verdicts, margins, strict=True))]
    return [Scored(i, v.predicted, v.radius, v.verdict, v.rule, v.pvalue, score,
                   *_certificate_columns(v.certificate))
            for i, (v, score) in enumerate(zip(verdicts, scores, strict=True))]


def _certificate_columns(cert: dict | None) -> tuple:
    if cert is None:
        return (None,) * 6
    return (cert["eps"], int(cert["proved"]), cert["stage"], cert["verifier_version"],
            cert["model_sha256"], cert["preprocessing"])


def _fmt(value: float | int | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def to_csv(rows: list[Scored]) -> str:
    """CSV text, one row per input in COLUMNS' order (empty: not applicable); the last six are
    the verdict's certificate."""
    lines = [",".join(COLUMNS)]
    lines += [",".join(repr(r.eps) if c == "eps" and r.eps is not None else _fmt(getattr(r, c))
                       for c in COLUMNS) for r in rows]  # eps exactly: recheck proves it again
    return "\n".join(lines) + "\n"


def cmd_score(args: argparse.Namespace) -> int:
    """Write the verdicts as CSV and a one-line summary on stderr."""
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise CliError(f"{out.parent}: no such directory for --out")
    try:
        rows = score_inputs(args.model, args.inputs, args.profile, args.policy, args.jobs)
    except ValueError as exc:
        if type(exc) is not ValueError:
            raise
        raise CliError(str(exc)) from None
    text = to_csv(rows)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    rejected = sum(r.verdict == "reject" for r in rows)
    invalid = sum(r.verdict == "invalid" for r in rows)
    print(f"{len(rows)} inputs: {rejected} rejected, {invalid} invalid"
          + (f" -> {out}" if out else ""), file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The score subcommand's arguments."""
    from worker.argtypes import positive_int

    p.add_argument("model", help="ONNX model")
    p.add_argument("inputs", help=".npy/.npz array [N, ...] in [0, 1] (uint8 is scaled by "
                   "1/255) or a folder of PNG images, taken in order as one stream")
    p.add_argument("--profile", required=True, help="profile.json from `radiusguard calibrate`")
    p.add_argument("--policy", choices=tuple(POLICIES), help="default: the profile's policy")
    p.add_argument("--out", help="CSV file (default: standard output)")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1, help="threads")
    p.set_defaults(func=cmd_score)

