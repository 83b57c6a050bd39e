"""`radiusguard recheck VERDICTS MODEL INPUTS`: re-prove every certificate of a verdict file.

An auditor's check of decisions made elsewhere: for each verdict with a proved certificate,
the model's sha256 must match, the input (found by the verdict's id) must still be classified
as the certificate's label, and the certificate's stage alone must prove the clipped L-infinity
ball of radius eps around it again. Verdicts come from `score`'s CSV or from a recording
(`.rgr`) of the verdict topic; inputs from an array file (ids are indices) or a recording of
the input topic (ids are the records' ids).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Checked", "RecheckError", "recheck", "register"]


class RecheckError(ValueError):
    """A verdict or input file that recheck cannot read."""


@dataclass(frozen=True)
class Checked:
    """One verdict's recheck: status is confirmed, failed, unproved (nothing was claimed) or
    invalid (no certificate); detail says why."""

    id: str
    verdict: str
    status: str
    detail: str


def _csv_verdicts(path: Path) -> list[dict]:
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            cert = None
            if row.get("eps"):
                cert = {"eps": float(row["eps"]), "proved": bool(int(row["proved"])),
                        "stage": row["stage"] or None, "label": int(row["predicted"]),
                        "verifier_version": int(row["verifier_version"]),
                        "model_sha256": row["model_sha256"]}
            out.append({"id": row["index"], "verdict": row["verdict"], "certificate": cert})
    return out


def _recorded_verdicts(path: Path) -> list[dict]:
    from worker.formats.codec import decode_verdict
    from worker.formats.recording import read_recording

    return [decode_verdict(r.value) for r in read_recording(path) if r.value is not None]


def load_verdicts(path: str | Path) -> list[dict]:
    """Verdicts as dicts with id, verdict and certificate, from a CSV or a recording."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such verdict file")
    if path.suffix == ".csv":
        return _csv_verdicts(path)
    if path.suffix == ".rgr":
        return _recorded_verdicts(path)
    raise ValueError(f"{path}: verdicts must be score's .csv or a .rgr recording")


def load_input_lookup(path: str | Path, shape: tuple[int, ...]) -> Callable[[str], np.ndarray]:
    """id -> the decoded input, from an array file (id = index) or an input recording."""
    from worker.formats.codec import InputRecord, decode_input
    from worker.formats.recording import read_recording
    from worker.inputs import load_inputs

    path = Path(path)
    if path.suffix == ".rgr":
        table = {}
        for rec in read_recording(path):
            dec = decode_input(rec.key, rec.value or b"", None, shape)
            if isinstance(dec, InputRecord):
                table[dec.id] = dec.x
        return lambda rid: table[rid]
    xs = load_inputs(path, shape)
    return lambda rid: xs[int(rid)]


def recheck(verdicts: list[dict], net, lookup: Callable[[str], np.ndarray]) -> list[Checked]:
    """Re-prove each verdict's certificate with the stage it names (see the module doc)."""
    from dataclasses import replace

    from verifier.check import margins
    from verifier.score import plan_for
    from verifier.settings import VERIFIER_VERSION, VerifierSettings

    out = []
    for v in verdicts:
        rid, verdict, cert = str(v.get("id")), v.get("verdict", "?"), v.get("certificate")
        if cert is None:
            out.append(Checked(rid, verdict, "invalid", "no certificate"))
            continue
        if not cert["proved"]:
            out.append(Checked(rid, verdict, "unproved", "nothing was proved"))
            continue
        if cert["model_sha256"] != net.sha256:
            out.append(Checked(rid, verdict, "failed", "certificate is for another model"))
            continue
        try:
            x = np.asarray(lookup(rid), dtype=np.float64).reshape(-1)
        except (KeyError, IndexError, ValueError):
            out.append(Checked(rid, verdict, "failed", "no input with this id"))
            continue
        label = int(cert["label"])
        if net.predict(x) != label:
            out.append(Checked(rid, verdict, "failed", f"the input is not classified {label}"))
            continue
        lo, hi = cert.get("input_range") or (None, None)
        settings = replace(VerifierSettings(), domain=cert["stage"], input_lower=lo,
                           input_upper=hi)
        m = float(np.min(margins(plan_for(net, settings), x, cert["eps"], label, settings)))
        version = "" if cert["verifier_version"] == VERIFIER_VERSION else (
            f" (issued by verifier version {cert['verifier_version']}, rechecked by "
            f"{VERIFIER_VERSION})")
        status = "confirmed" if m > 0 else "failed"
        out.append(Checked(rid, verdict, status,
                           f"{cert['stage']} margin {m:.4g} at eps {cert['eps']!r}{version}"))
    return out


def cmd_recheck(args: argparse.Namespace) -> int:
    """Print one CSV row per verdict and a summary; exit 1 when any certificate fails."""
    from worker.modelfile import load_model

    net = load_model(args.model)
    try:
        verdicts = load_verdicts(args.verdicts)
        lookup = load_input_lookup(args.inputs, net.input_shape)
    except ValueError as exc:
        raise RecheckError(str(exc)) from None
    checked = recheck(verdicts, net, lookup)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(("id", "verdict", "status", "detail"))
    for c in checked:
        writer.writerow((c.id, c.verdict, c.status, c.detail))
    tally = Counter(c.status for c in checked)
    accepted_unproved = sum(c.verdict == "accept" and c.status != "confirmed" for c in checked)
    print(f"recheck: {len(checked)} verdicts, {tally['confirmed']} certificates confirmed, "
          f"{tally['failed']} failed, {tally['unproved']} claimed nothing, {tally['invalid']} "
          f"invalid; {accepted_unproved} accepted without a confirmed proof", file=sys.stderr)
    return 1 if tally["failed"] else 0


def register(sub) -> None:
    """Add the `recheck` subcommand to the CLI's subparsers."""
    p = sub.add_parser("recheck", help="re-prove the certificates of a verdict file offline")
    p.add_argument("verdicts", help="verdicts: score's CSV or a .rgr recording of the topic")
    p.add_argument("model", help="the ONNX model the verdicts name")
    p.add_argument("inputs", help="the inputs: an array file (ids are indices) or a .rgr "
                   "recording of the input topic")
    p.set_defaults(func=cmd_recheck)
