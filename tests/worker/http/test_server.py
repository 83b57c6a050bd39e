"""`radiusguard http` as a client sees it: the real server in a subprocess, a plain HTTP client
(urllib), Open Inference Protocol v2 routes; verdicts equal the offline processor's."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from verifier.onnx.importer import load_onnx
from verifier.score import plan_for
from worker.formats.codec import encode_input
from worker.processor import Processor, Record, Scorer, process_all
from worker.profile import load_profile

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[3]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
PROFILE = ROOT / "models" / "fnn-3x30-relu.profile.json"
MNIST = ROOT / "models" / "mnist_test_1000.npz"
NAME = "fnn-3x30-relu"


@contextlib.contextmanager
def serving(model: Path, profile: Path, *options: str) -> Iterator[str]:
    """`radiusguard http` for the model on a free port; yields its base URL, stopped with
    SIGTERM afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "http", "--model", str(model), "--profile",
         str(profile), "--port", "0", *options],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "serving":
                url.append(event["url"].split("/v2/")[0])
            if event.get("event") == "ready":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180):
        proc.kill()
        pytest.fail("server not ready in 180 s: " + "".join(lines[-20:]))
    try:
        yield url[0]
    finally:
        proc.terminate()
    assert proc.wait(30) == 0, "".join(lines[-20:])


@pytest.fixture(scope="module")
def server():
    """The shipped FNN's server; yields its base URL."""
    with serving(FNN, PROFILE, "--jobs", "2", "--max-batch", "64",
                 "--max-request-bytes", "2000000") as url:
        yield url


def _call(url: str, method: str = "GET", body: bytes | dict | list | None = None) -> tuple[int, dict]:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _infer(base: str, body: dict | list | bytes) -> tuple[int, dict]:
    return _call(f"{base}/v2/models/{NAME}/infer", "POST", body)


def _tensor(xs: np.ndarray, datatype: str) -> dict:
    return {"name": "input", "shape": list(xs.shape), "datatype": datatype,
            "data": xs.reshape(-1).tolist()}


def _columns(resp: dict) -> dict[str, list]:
    return {o["name"]: o["data"] for o in resp["outputs"]}


@pytest.fixture(scope="module")
def offline():
    """Verdicts of the Kafka worker's own batch logic for records of one stream."""
    net = load_onnx(FNN)
    profile = load_profile(PROFILE)
    v = profile.verifier
    znet = plan_for(net, v)
    scorer = Scorer(znet, v, jobs=2)

    def verdicts(xs: np.ndarray, dtype: str, policy: str = "threshold") -> dict[str, list]:
        records = []
        for i, x in enumerate(xs):
            key, value = encode_input(f"x{i}", x, stream="s", dtype=dtype)
            records.append(Record("inputs", 0, i, key, value))
        out = process_all(Processor(znet, profile, policy, scorer), records, batch=7).verdicts
        # over OIP a missing radius is -1 (the threshold policy decides at its budget)
        return {"verdict": [v.verdict for _, v in out],
                "radius": [-1.0 if v.radius is None else v.radius for _, v in out],
                "predicted": [v.predicted for _, v in out], "rule": [v.rule for _, v in out],
                "eps": [v.certificate["eps"] for _, v in out],
                "stage": [v.certificate["stage"] or "" for _, v in out]}

    yield verdicts
    scorer.close()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """20 digits and 6 noise images (small radii, rejected), uint8 [26, 28, 28]."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    return np.concatenate([np.load(MNIST)["x"][:20], noise])[rng.permutation(26)]


# ------------------------------------------------------------------------------ health, metadata


def test_health_and_readiness(server: str) -> None:
    assert _call(f"{server}/v2/health/live") == (200, {"live": True})
    assert _call(f"{server}/v2/health/ready") == (200, {"ready": True})
    assert _call(f"{server}/v2/models/{NAME}/ready") == (200, {"name": NAME, "ready": True})
    assert _call(f"{server}/healthz") == (200, {"live": True})
    assert _call(f"{server}/readyz") == (200, {"ready": True})


def test_model_metadata(server: str) -> None:
    status, meta = _call(f"{server}/v2/models/{NAME}")
    assert status == 200
    assert meta["name"] == NAME
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert meta["inputs"][0]["parameters"]["accepted_shapes"] == [[-1, 1, 28, 28], [-1, 784]]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "verdict": "BYTES", "radius": "FP64", "predicted": "INT64", "rule": "BYTES",
        "reason": "BYTES", "eps": "FP64", "stage": "BYTES", "certificate": "BYTES"}
    budget = load_profile(PROFILE).guaranteed_budget
    assert budget is not None and meta["parameters"]["guaranteed_budget"] == budget
    assert meta["parameters"]["policy"] == "threshold"
    assert meta["parameters"]["model_sha256"] == load_onnx(FNN).sha256


# ------------------------------------------------------------------------------ infer


def test_single_input_matches_the_offline_processor(server: str, offline, digits) -> None:
    x = digits[:1].astype(np.float64) / 255.0
    status, resp = _infer(server, {"id": "r1", "inputs": [_tensor(x, "FP64")]})
    assert status == 200, resp
    assert resp["model_name"] == NAME and resp["id"] == "r1"
    assert all(o["shape"] == [1] for o in resp["outputs"])
    got = _columns(resp)
    assert {k: got[k] for k in ("verdict", "radius", "predicted", "rule", "eps", "stage")} == \
        offline(x, "float64")
    cert = json.loads(got["certificate"][0])
    assert cert["model_sha256"] == load_onnx(FNN).sha256 and cert["preprocessing"] == "float64"
    assert cert["eps"] == load_profile(PROFILE).guaranteed_budget == got["eps"][0]


@pytest.mark.parametrize("datatype,dtype", [("UINT8", "uint8"), ("FP32", "float32"),
                                            ("FP64", "float64")])
def test_batches_match_the_offline_processor(server: str, offline, digits, datatype,
                                             dtype) -> None:
    xs = digits if datatype == "UINT8" else (digits / 255.0).astype(dtype)
    status, resp = _infer(server, {"inputs": [_tensor(xs, datatype)]})
    assert status == 200, resp
    got = _columns(resp)
    want = offline(digits, "uint8") if datatype == "UINT8" else offline(xs, dtype)
    assert {k: got[k] for k in want} == want
    assert {"accept", "reject"} <= set(got["verdict"])  # the noise images are rejected
    assert all(o["shape"] == [len(digits)] for o in resp["outputs"])


def test_nested_data_and_flat_items_are_the_same_inputs(server: str, digits) -> None:
    xs = digits[:3]
    flat = {"inputs": [{"name": "x", "shape": [3, 784], "datatype": "UINT8",
                        "data": xs.reshape(3, 784).tolist()}]}
    status, a = _infer(server, flat)
    assert status == 200, a
    assert _infer(server, {"inputs": [_tensor(xs, "UINT8")]})[1]["outputs"] == a["outputs"]


def test_requested_outputs_only(server: str, digits) -> None:
    body = {"inputs": [_tensor(digits[:2], "UINT8")], "outputs": [{"name": "verdict"}]}
    status, resp = _infer(server, body)
    assert status == 200 and [o["name"] for o in resp["outputs"]] == ["verdict"]


def test_distribution_windows_per_stream_match_the_offline_processor(server: str, offline,
                                                                     digits) -> None:
    """Algorithm 2 over two requests of one stream equals one offline pass; another stream
    starts again from the seed window."""
    want = offline(digits, "uint8", policy="distribution")
    got: dict[str, list] = {k: [] for k in want}
    for part in (digits[:11], digits[11:]):
        body = {"inputs": [_tensor(part, "UINT8")],
                "parameters": {"policy": "distribution", "stream": "cam-http-1"}}
        status, resp = _infer(server, body)
        assert status == 200, resp
        assert resp["parameters"] == {"policy": "distribution", "stream": "cam-http-1"}
        for k, v in _columns(resp).items():
            if k in got:
                got[k] += v
    assert got == want
    status, resp = _infer(server, {"inputs": [_tensor(digits, "UINT8")], "parameters": {
        "policy": "distribution", "stream": "cam-http-2"}})
    assert {k: _columns(resp)[k] for k in want} == want


def test_concurrent_requests_each_get_their_own_verdicts(server: str, offline, digits) -> None:
    want = offline(digits, "uint8")

    def one(i: int) -> list:
        status, resp = _infer(server, {"inputs": [_tensor(digits[i:i + 1], "UINT8")]})
        assert status == 200, resp
        return _columns(resp)["radius"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        radii = [r[0] for r in pool.map(one, range(len(digits)))]
    assert radii == want["radius"]


# ------------------------------------------------------------------------------ bad requests


def _good(digits: np.ndarray) -> dict:
    return {"inputs": [_tensor(digits[:2], "UINT8")]}


def _bad_requests(digits: np.ndarray) -> dict[str, tuple[bytes | dict, int, str]]:
    good = _good(digits)
    t = good["inputs"][0]
    flt = _tensor(digits[:2] / 255.0, "FP64")
    nan = json.dumps({"inputs": [{**flt, "data": [float("nan")] + flt["data"][1:]}]}).encode()
    assert b"NaN" in nan
    return {
        "not JSON": (b"{inputs: nope", 400, "not JSON"),
        "not an object": ([1, 2], 400, "JSON object"),
        "no inputs": ({"id": "x"}, 400, "'inputs'"),
        "empty inputs": ({"inputs": []}, 400, "'inputs'"),
        "two inputs": ({"inputs": [t, t]}, 400, "one input tensor"),
        "wrong item shape": ({"inputs": [{**t, "shape": [2, 783]}]}, 400, "783 values"),
        "no batch dimension": ({"inputs": [{**t, "shape": [784]}]}, 400, "[N, ...]"),
        "data shorter than shape": ({"inputs": [{**t, "shape": [3, 784]}]}, 400, "1568 values"),
        "wrong datatype": ({"inputs": [{**t, "datatype": "INT32"}]}, 400, "datatype"),
        "strings as data": ({"inputs": [{**t, "data": ["a"] * 1568}]}, 400, "numbers"),
        "NaN": (nan, 400, "not finite numbers in [0, 1]"),
        "above 1": ({"inputs": [{**flt, "data": [1.5] + flt["data"][1:]}]}, 400, "[0, 1]"),
        "below 0": ({"inputs": [{**flt, "data": [-0.1] + flt["data"][1:]}]}, 400, "[0, 1]"),
        "uint8 above 255": ({"inputs": [{**t, "data": [256] + t["data"][1:]}]}, 400, "0..255"),
        "too many inputs": ({"inputs": [_tensor(np.zeros((65, 784), np.uint8), "UINT8")]}, 413,
                            "at most 64"),
        "unknown policy": ({**good, "parameters": {"policy": "vote"}}, 400, "policy"),
        "unknown output": ({**good, "outputs": [{"name": "logits"}]}, 400, "unknown outputs"),
    }


@pytest.mark.parametrize("case", list(_bad_requests(np.zeros((2, 28, 28), np.uint8))))
def test_bad_requests_get_4xx_and_a_reason(server: str, digits, case: str) -> None:
    body, code, words = _bad_requests(digits)[case]
    status, resp = _infer(server, body)
    assert status == code, resp
    assert set(resp) == {"error"} and words in resp["error"], resp


def test_a_body_over_the_limit_gets_413(server: str) -> None:
    status, resp = _infer(server, b'{"inputs": [' + b" " * 2_100_000 + b"]}")
    assert status == 413 and "2000000" in resp["error"], resp


def test_unknown_model_and_route(server: str, digits) -> None:
    for url, method in ((f"{server}/v2/models/nope", "GET"),
                        (f"{server}/v2/models/nope/ready", "GET"),
                        (f"{server}/v2/models/nope/infer", "POST")):
        status, resp = _call(url, method, _good(digits) if method == "POST" else None)
        assert status == 404 and "unknown model 'nope'" in resp["error"], resp
    assert _call(f"{server}/v2/nothing-here")[0] == 404
    status, resp = _call(f"{server}/v2/health/live", "POST", b"{}")
    assert status == 405 and "not allowed" in resp["error"]


def test_still_serving_after_bad_requests_and_metrics(server: str, digits) -> None:
    for body, _, _ in _bad_requests(digits).values():
        _infer(server, body)
    status, resp = _infer(server, _good(digits))
    assert status == 200 and len(_columns(resp)["verdict"]) == 2
    assert _call(f"{server}/v2/health/ready")[0] == 200
    with urllib.request.urlopen(f"{server}/metrics", timeout=30) as r:
        text = r.read().decode()
    route = 'route="/v2/models/{name}/infer"'
    assert f'radiusguard_http_requests_total{{code="400",{route}}}' in text
    assert f'radiusguard_http_requests_total{{code="200",{route}}}' in text
    assert 'radiusguard_inputs_total{verdict="accept"}' in text
    assert "radiusguard_radius_count" in text


def test_port_in_use_is_a_one_line_error(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "worker.cli", "http", "--model", str(FNN), "--profile",
         str(PROFILE), "--port", port], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("radiusguard http: error: cannot listen on 127.0.0.1:"), last
    assert time.monotonic() - started < 120
