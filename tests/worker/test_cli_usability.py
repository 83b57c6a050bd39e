"""What a new user meets first: --version, help with defaults, checked ports, a per-user cache,
refused truncated recordings, model files named in errors, a short network repr, and a clear
line when the broker cannot be reached."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import onnx
import pytest

from verifier.onnx.importer import load_onnx
from worker.cli import build_parser, main
from worker.formats.recording import (
    Recorded,
    ReplayFileError,
    check_recording,
    read_recording,
    write_recording,
)
from worker.kafka.bootstrap import BrokerUnreachable, bootstrap_addresses, wait_for_broker
from worker.kafka.config import ConfigError
from worker.local import broker
from worker.paths import cache_dir

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
FNN_PROFILE = ROOT / "models" / "fnn-3x30-relu.profile.json"
CNN = ROOT / "models" / "cnn-6-16-128-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"


def _one_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ------------------------------------------------------------------------------ help, version


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"radiusguard \d+\.\d+\S*\n", capsys.readouterr().out)


def test_every_option_has_help_and_its_default_is_shown() -> None:
    commands = _subcommands()
    assert {"radius", "calibrate", "serve", "http", "kafka", "produce", "record", "replay",
            "demo"} <= set(commands)
    for name, p in commands.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert f"(default: {action.default})" in text, f"{what}: default not shown"


@pytest.mark.parametrize("argv", [
    ["serve", "--bootstrap", "h:1", "--model", "m", "--profile", "p", "--metrics-port", "99999"],
    ["serve", "--bootstrap", "h:1", "--model", "m", "--profile", "p", "--metrics-port", "-1"],
    ["kafka", "start", "--port", "65536"],
    ["http", "--model", "m", "--profile", "p", "--port", "http"],
])
def test_ports_out_of_range_are_refused(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "expected a port number" in _one_line(capsys)


# ------------------------------------------------------------------------------ cache dir


def test_the_cache_is_per_user_and_never_the_current_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RADIUSGUARD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "radiusguard"
    args = build_parser().parse_args(["kafka", "status"])
    assert Path(args.data_dir) == tmp_path / "xdg" / "radiusguard" / "kafka" / "broker"
    assert Path(args.jar_cache) == tmp_path / "xdg" / "radiusguard" / "kafka" / "libs"
    demo = build_parser().parse_args(["demo"])
    assert demo.data_dir.is_relative_to(tmp_path / "xdg") and demo.jar_cache == Path(
        args.jar_cache)
    assert broker.BrokerConfig().data_dir == Path(args.data_dir)
    monkeypatch.setenv("RADIUSGUARD_CACHE_DIR", str(tmp_path / "own"))
    assert broker.BrokerConfig().jar_cache == tmp_path / "own" / "kafka" / "libs"
    monkeypatch.delenv("RADIUSGUARD_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "radiusguard"


def test_kafka_status_leaves_the_current_folder_alone(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RADIUSGUARD_CACHE_DIR": str(tmp_path / "c")}
    res = subprocess.run([sys.executable, "-m", "worker.cli", "kafka", "status"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout) == (1, "not running\n"), res.stderr
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------------------ recordings


def _recording(path: Path, n: int) -> None:
    write_recording(path, [Recorded(b"k", bytes([i]) * 50, (("h", b"v"),), i) for i in range(n)])


def test_truncated_recording_is_refused_before_anything_is_sent(tmp_path, capsys) -> None:
    good = tmp_path / "good.rgr"
    _recording(good, 10)
    assert check_recording(good) == 10
    bad = tmp_path / "bad.rgr"
    bad.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(ReplayFileError, match=r"truncated: 9 complete records, then \d+ bytes"):
        check_recording(bad)
    seen = []
    with pytest.raises(ReplayFileError, match="truncated"):
        for r in read_recording(bad):  # the lazy reader, too, fails after the complete ones
            seen.append(r)
    assert len(seen) == 9
    # Port 9 has no broker: had replay connected first, the error would be about the broker.
    assert main(["replay", str(bad), "--topic", "t", "--bootstrap", "127.0.0.1:9"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"radiusguard replay: error: {bad}: truncated: 9 complete records")


# ------------------------------------------------------------------------------ model files


def _zero_input_model(path: Path) -> None:
    graph = onnx.helper.make_graph([], "empty", [], [])
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())


@pytest.mark.parametrize("kind,words", [
    ("empty", "empty file, not an ONNX model"),
    ("missing", "no such file"),
    ("folder", "is a directory"),
    ("garbage", "not a readable ONNX model"),
    ("no inputs", "expected one data input, found 0"),
])
def test_model_file_errors_name_the_file(tmp_path, capsys, kind, words) -> None:
    model = tmp_path / "model.onnx"
    if kind == "empty":
        model.write_bytes(b"")
    elif kind == "folder":
        model.mkdir()
    elif kind == "garbage":
        model.write_bytes(b"\x00garbage" * 10)
    elif kind == "no inputs":
        _zero_input_model(model)
    assert main(["radius", str(model), str(MNIST)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"radiusguard radius: error: {model}: ") and words in line, line


def test_network_repr_is_one_short_line() -> None:
    net = load_onnx(CNN)
    text = repr(net)
    assert "\n" not in text and len(text) < 400 and "array" not in text
    assert text.startswith("Network('cnn-6-16-128-relu', input 1x28x28, 10 outputs")
    assert "Conv 1x28x28->6x26x26" in text and "Dense 128->10" in text
    assert str(net) == text


# ------------------------------------------------------------------------------ broker start-up


def test_wait_for_broker_names_the_cause(tmp_path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert wait_for_broker(f"127.0.0.1:1,127.0.0.1:{port}", 5) == f"127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=rf"127\.0\.0\.1:{port}: connection refused"):
        wait_for_broker(f"127.0.0.1:{port}", 1.5, interval_s=0.2)
    assert time.monotonic() - started < 5
    assert bootstrap_addresses("a:1, [::1]:2,b") == [("a", 1), ("::1", 2), ("b", 9092)]
    with pytest.raises(ConfigError, match="not host:port"):
        bootstrap_addresses("a:x")


def test_serve_against_no_broker_says_so_in_one_line_and_answers_healthz() -> None:
    port, metrics_port = broker.free_port(), broker.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "serve", "--bootstrap", f"127.0.0.1:{port}",
         "--model", str(FNN), "--profile", str(FNN_PROFILE), "--metrics-port",
         str(metrics_port), "--connect-timeout", "8"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    started = time.monotonic()
    health = None
    while proc.poll() is None and health is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as r:
                health = r.status
            with pytest.raises(urllib.error.HTTPError) as not_ready:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2)
            assert not_ready.value.code == 503
        except urllib.error.URLError:
            time.sleep(0.2)
    _, err = proc.communicate(timeout=120)
    assert health == 200, err
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines == [f"radiusguard serve: error: cannot reach the Kafka broker within 8 s "
                     f"(127.0.0.1:{port}: connection refused); check --bootstrap and that the "
                     "broker is running"], err
    assert time.monotonic() - started < 60
