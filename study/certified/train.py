"""Certified training of the study's networks: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et
al. 2020) with the standard schedules, exported to ONNX like the other trainers.

    radiusguard train --certified 0.2 --net cnn-6-16-128-relu --method ibp --epochs 30

Schedule over `epochs`: `warmup` epochs at eps 0, then eps ramped linearly to the training eps
over `ramp` epochs and held; kappa (the clean loss's weight) falls from 1 to kappa_end over the
ramp (0.5 for IBP, 0 for CROWN-IBP); CROWN-IBP's beta mixes the CROWN and IBP lower bounds
from 1 to 0 over the ramp. Adam, lr 1e-3 stepped down 10x at 75 % and 90 % of the epochs,
gradient norm clipped at 10. Each epoch prints clean and IBP-certified test accuracy.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from study.certified.bounds import crown_margins, ibp_margins, worst_case_loss

METHODS = ("ibp", "crown-ibp")


@dataclass(frozen=True)
class Schedule:
    """The training eps and the warm-up, ramp and loss-mixing schedule."""

    eps: float
    method: str = "ibp"
    epochs: int = 30
    warmup: int = 2
    ramp: int = 10
    kappa_end: float | None = None  # default 0.5 (IBP) or 0 (CROWN-IBP)
    lr: float = 1e-3
    batch: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"the certified training eps must be positive, got {self.eps}")
        if self.epochs < 1 or self.warmup < 0 or self.ramp < 1:
            raise ValueError("epochs >= 1, warmup >= 0 and ramp >= 1 are needed")

    def progress(self, step: float) -> float:
        """Share of the ramp done at `step` epochs (fractional), in [0, 1]."""
        return min(max((step - self.warmup) / self.ramp, 0.0), 1.0)

    def at(self, step: float) -> tuple[float, float, float]:
        """(eps, kappa, beta) at `step` epochs."""
        t = self.progress(step)
        end = self.kappa_end if self.kappa_end is not None else (
            0.5 if self.method == "ibp" else 0.0)
        return self.eps * t, 1.0 - (1.0 - end) * t, 1.0 - t

    def as_dict(self) -> dict:
        return asdict(self)


def certified_accuracy(model: nn.Sequential, x: np.ndarray, y: np.ndarray, eps: float,
                       batch: int = 500) -> tuple[float, float]:
    """(clean accuracy, share of inputs whose IBP margins are all positive at eps)."""
    model.eval()
    clean = proved = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))
            yb = torch.from_numpy(np.asarray(y[i : i + batch], dtype=np.int64))
            clean += int((model(xb).argmax(1) == yb).sum())
            m = ibp_margins(model, xb, eps, yb)
            m = m.scatter(1, yb[:, None], math.inf)
            proved += int((m.min(1).values > 0).sum())
    return clean / len(x), proved / len(x)


def train_certified(model: nn.Sequential, train_x: np.ndarray, train_y: np.ndarray,
                    schedule: Schedule, test: tuple[np.ndarray, np.ndarray] | None = None,
                    log=print) -> list[dict]:
    """Train `model` in place; returns one record per epoch (losses, accuracies)."""
    torch.manual_seed(schedule.seed)
    opt = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    milestones = [int(0.75 * schedule.epochs), int(0.9 * schedule.epochs)]
    lr_steps = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    y = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    gen = torch.Generator().manual_seed(schedule.seed)
    steps = math.ceil(len(x) / schedule.batch)
    history = []
    for epoch in range(schedule.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total, t0 = 0.0, time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False,
                   disable=not sys.stderr.isatty())
        for k in bar:
            idx = perm[k * schedule.batch : (k + 1) * schedule.batch]
            eps, kappa, beta = schedule.at(epoch + k / steps)
            xb, yb = x[idx], y[idx]
            loss = kappa * nn.functional.cross_entropy(model(xb), yb)
            if eps > 0 and kappa < 1:
                m = ibp_margins(model, xb, eps, yb)
                if schedule.method == "crown-ibp" and beta > 0:
                    m = beta * crown_margins(model, xb, eps, yb) + (1 - beta) * m
                loss = loss + (1 - kappa) * worst_case_loss(m, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            total += loss.item()
        lr_steps.step()
        eps, kappa, beta = schedule.at(epoch + 1)
        record = {"epoch": epoch + 1, "loss": total / steps, "eps": eps, "kappa": kappa,
                  "beta": beta, "seconds": round(time.perf_counter() - t0, 1)}
        if test is not None:
            clean, proved = certified_accuracy(model, *test, schedule.eps)
            record.update(clean_accuracy=clean, ibp_certified=proved)
        history.append(record)
        log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items()))
    model.eval()
    return history
