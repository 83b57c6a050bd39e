"""`radiusguard http`: verdicts over the Open Inference Protocol v2 (REST), on aiohttp.

The same scoring as the Kafka worker (`worker.processor.Scorer` on a pool of `--jobs` threads,
whose Numba kernels release the GIL) and the same validators (`worker.validate`). Policy
`threshold` is stateless. Policy `distribution` (Algorithm 2) keeps one window per
`parameters.stream` of the request, in memory only: windows start from the profile's seed
window, are lost on restart, and the least recently used is dropped beyond `--max-streams`.
The inputs of one request step their stream's window in order, atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from worker.argtypes import port_number, positive_int
from worker.http.oip import (
    InferRequest,
    Outcome,
    RequestError,
    infer_response,
    model_metadata,
    parse_infer,
)
from worker.kafka.config import ConfigError
from worker.metrics import LATENCY_BUCKETS, Metrics
from worker.policy import POLICIES, Signals, logit_margins, make_validator
from worker.validate import WindowState

__all__ = ["HttpServeError", "InferenceModel", "add_arguments", "build_app", "run"]

log = structlog.get_logger("radiusguard.http")


class HttpServeError(ConfigError):
    """The server cannot start (port taken, bad settings); the message says why."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `radiusguard http`."""
    p.add_argument("--model", required=True, help="ONNX model")
    p.add_argument("--profile", required=True, help="profile.json from `radiusguard calibrate`; "
                   "its name is the model name in the URLs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_number, required=True,
                   help="port to listen on (0: any free port, printed at start)")
    p.add_argument("--policy", choices=tuple(POLICIES),
                   help="default policy (a request's parameters.policy overrides it); "
                   "default: the profile's")
    p.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 1,
                   help="verifier threads shared by all requests")
    p.add_argument("--max-batch", type=positive_int, default=256,
                   help="most inputs in one request")
    p.add_argument("--max-request-bytes", type=positive_int, default=64 << 20,
                   help="largest request body")
    p.add_argument("--max-streams", type=positive_int, default=10000,
                   help="Algorithm 2 windows kept in memory (least recently used dropped)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level")


class InferenceModel:
    """One model and profile: scores inputs on a thread pool and validates their radii."""

    def __init__(self, model: Path, profile: Path, policy: str | None, jobs: int,
                 max_streams: int = 10000):
        from prometheus_client import Counter, Gauge, Histogram

        from verifier.score import plan_for
        from worker.modelfile import load_model
        from worker.processor import Scorer
        from worker.profile import check_model, load_profile

        net = load_model(model)
        self.profile = load_profile(profile)
        check_model(self.profile, net)
        self.net = net
        self.policy = policy or self.profile.policy
        v = self.profile.verifier
        self.scorer = Scorer(plan_for(net, v), v, jobs)
        # Request threads only wait for the scorer's pool; the scorer's threads do the work.
        self.waiters = ThreadPoolExecutor(max_workers=4 * jobs + 4, thread_name_prefix="request")
        self.validators = {}
        for p in POLICIES:  # every policy the profile has parameters for
            with contextlib.suppress(ValueError):
                self.validators[p] = make_validator(self.profile, p)
        self.validators[self.policy] = make_validator(self.profile, self.policy)
        self.windows: OrderedDict[str, WindowState] = OrderedDict()
        self.max_streams = max_streams
        # The worker's metrics (inputs by verdict, radii; its Kafka ones stay at zero here) and
        # the HTTP server's own, in one registry.
        self.metrics = Metrics()
        self.registry = r = self.metrics.registry
        self.requests = Counter("radiusguard_http_requests", "HTTP requests by route and status",
                                ["route", "code"], registry=r)
        self.seconds = Histogram("radiusguard_http_request_seconds", "Seconds per HTTP request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.streams = Gauge("radiusguard_streams", "Algorithm 2 windows held in memory",
                             registry=r)

    @property
    def ready(self) -> bool:
        """True once the kernels are loaded."""
        return self.metrics.ready

    @property
    def name(self) -> str:
        """The model name in the URLs: the profile's name."""
        return self.profile.name

    def metadata(self) -> dict[str, Any]:
        """GET /v2/models/{name}."""
        return model_metadata(self.name, self.net.input_shape, {
            "policy": self.policy, "threshold": self.profile.threshold,
            "guaranteed_budget": self.validators[self.policy].budget,
            "model_sha256": self.net.sha256, "window_size": self.profile.window_size,
        })

    def warm_up(self) -> None:
        """Load the compiled kernels (blocking), then report ready."""
        self.scorer.score([np.zeros(self.net.input_size)])
        self.metrics.ready = True

    async def infer(self, req: InferRequest) -> list[Outcome]:
        """Radii (or decisions at the budget) on the scorer's threads, then the policy's
        verdicts in input order."""
        from verifier.decide import Proof
        from worker.processor import certificate_of

        loop = asyncio.get_running_loop()
        policy = req.policy or self.policy
        validator = self.validators.get(policy)
        if validator is None:
            raise RequestError(f"profile {self.profile.name} has no parameters for policy {policy}")
        results = await loop.run_in_executor(self.waiters, self.scorer.score, list(req.xs),
                                             validator.budget)
        margins = [None] * len(results)
        if validator.needs_margin:
            margins = list(logit_margins(self.net.forward(np.stack([x.reshape(-1)
                                                                    for x in req.xs]))))
        stateful = validator.initial_state() is not None
        state = None
        if stateful:  # from here to the store below, no await: atomic
            state = self.windows.get(req.stream, validator.initial_state())
        outcomes = []
        for res, margin in zip(results, margins, strict=True):
            if isinstance(res, Exception):
                outcomes.append(Outcome("invalid", -1.0, -1, "verify",
                                        f"verification failed: {type(res).__name__}: {res}"))
                continue
            proof = res if isinstance(res, Proof) else None
            radius = None if proof else res.radius
            decision, state = validator.step(state, Signals(radius, margin, proof))
            cert = certificate_of(res, self.scorer.settings, self.net.sha256, req.preprocessing)
            outcomes.append(Outcome(
                decision.verdict, -1.0 if radius is None else radius, cert["label"],
                decision.rule, decision.reason, cert["eps"], cert["stage"] or "",
                json.dumps(cert, sort_keys=True)))
            if radius is not None:
                self.metrics.radius.observe(radius)
        if stateful:
            self.windows[req.stream] = state
            self.windows.move_to_end(req.stream)
            while len(self.windows) > self.max_streams:
                self.windows.popitem(last=False)
            self.streams.set(len(self.windows))
        for o in outcomes:
            self.metrics.inputs.labels(o.verdict).inc()
        return outcomes

    def close(self) -> None:
        """Finish running passes and release the threads."""
        self.waiters.shutdown(wait=True)
        self.scorer.close()


def build_app(model: InferenceModel, max_batch: int = 256, max_request_bytes: int = 64 << 20):
    """The aiohttp application serving one model."""
    from aiohttp import web
    from prometheus_client import generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    def known(request: web.Request) -> None:
        name = request.match_info["name"]
        if name != model.name:
            raise RequestError(f"unknown model {name!r}; this server has {model.name!r}", 404)

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"ready": model.ready}, status=200 if model.ready else 503)

    async def metadata(request: web.Request) -> web.Response:
        known(request)
        return web.json_response(model.metadata())

    async def model_ready(request: web.Request) -> web.Response:
        known(request)
        return web.json_response({"name": model.name, "ready": model.ready},
                                 status=200 if model.ready else 503)

    async def infer(request: web.Request) -> web.Response:
        known(request)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"the request body is not JSON: {exc}") from None
        req = parse_infer(body, model.net.input_shape, max_batch)
        outcomes = await model.infer(req)
        params = {"policy": req.policy or model.policy}
        if params["policy"] == "distribution":
            params["stream"] = req.stream
        return web.json_response(infer_response(model.name, req, outcomes, params))

    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(model.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    @web.middleware
    async def errors(request: web.Request, handler) -> web.StreamResponse:
        """Every error as {"error": "..."}; each request counted and timed by route."""
        t0 = time.perf_counter()
        try:
            resp = await handler(request)
        except RequestError as exc:
            resp = web.json_response({"error": str(exc)}, status=exc.status)
        except web.HTTPException as exc:
            resp = web.json_response({"error": _http_error(request, exc)}, status=exc.status)
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "other"
        model.requests.labels(route, str(resp.status)).inc()
        model.seconds.labels(route).observe(time.perf_counter() - t0)
        return resp

    app = web.Application(middlewares=[errors], client_max_size=max_request_bytes)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", live)  # the worker's names, for the same probes
    app.router.add_get("/readyz", ready)
    return app


def _http_error(request, exc) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}"
    text = exc.text or exc.reason
    return text.split(": ", 1)[-1] if text.startswith(f"{exc.status}: ") else text


def run(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM/SIGINT."""
    from worker.logs import configure_logging

    configure_logging(args.log_level)
    model = InferenceModel(Path(args.model), Path(args.profile), args.policy, args.jobs,
                           args.max_streams)
    try:
        asyncio.run(_serve(model, args))
    finally:
        model.close()
    return 0


async def _serve(model: InferenceModel, args: argparse.Namespace) -> None:
    from aiohttp import web

    app = build_app(model, args.max_batch, args.max_request_bytes)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port).start()
        except OSError as exc:
            raise HttpServeError(f"cannot listen on {args.host}:{args.port}: "
                                 f"{exc.strerror or exc}") from None
        host, port = runner.addresses[0][:2]
        log.info("serving", model=model.name, policy=model.policy, jobs=args.jobs,
                 url=f"http://{host}:{port}/v2/models/{model.name}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await loop.run_in_executor(model.waiters, model.warm_up)
        log.info("ready", model=model.name)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
