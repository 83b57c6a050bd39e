"""The command line: calibrate, produce/record/replay through a broker, the demo end to end,
one-line errors, configuration checks and the metrics routes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from tests.kafka_fixtures import JAR_CACHE
from verifier.onnx.importer import load_onnx
from worker.calibrate import calibrate
from worker.cli import main
from worker.formats.codec import decode_input
from worker.formats.recording import Recorded, read_recording, records_from_arrays, write_recording
from worker.kafka.config import ConfigError, ServiceConfig, client_settings, kafka_settings
from worker.local import broker
from worker.local.demo import Tally, format_report
from worker.metrics import Metrics, _route
from worker.profile import load_profile, save_profile

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"


def _err_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------ errors


def test_wrong_flags_are_one_line_errors(capsys, tmp_path: Path) -> None:
    line = _usage_error(["produce", "x.npy"], capsys)
    assert "--stream" in line and "--bootstrap" in line and line.startswith("radiusguard produce")
    line = _usage_error(["produce", "x.npy", "--stream", "s", "--bootstrap", "h:1",
                         "--rate", "fast"], capsys)
    assert "expected a number" in line
    line = _usage_error(["replay", "f.rgr", "--topic", "t", "--bootstrap", "h:1", "--rate",
                         "2", "--fast"], capsys)
    assert "not allowed with" in line
    line = _usage_error(["calibrate", str(FNN), "v.npy", "--labels", "l.npy",
                         "--max-false-alarm", "1.5", "--out", "p.json"], capsys)
    assert "[0, 1)" in line
    line = _usage_error(["calibrate", str(FNN), "v.npy", "--labels", "l.npy",
                         "--max-false-alarm", "0.1", "--attack", "fgsm", "--out", "p.json"],
                        capsys)
    assert "NAME=ADV.npy" in line
    line = _usage_error(["record", "--topic", "t", "--out", "x", "--bootstrap", "h:1",
                         "--idle", "0"], capsys)
    assert "positive" in line
    line = _usage_error(["frobnicate"], capsys)
    assert "invalid choice" in line


def test_wrong_files_are_one_line_errors(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.npy"
    assert main(["produce", str(missing), "--stream", "s", "--bootstrap", "127.0.0.1:1"]) == 2
    assert _err_lines(capsys) == [f"radiusguard produce: error: {missing}: no such file or "
                                  "directory"]
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((3, 4), 2.0))
    assert main(["produce", str(bad), "--stream", "s", "--bootstrap", "127.0.0.1:1"]) == 2
    (line,) = _err_lines(capsys)
    assert "[0, 1]" in line
    assert main(["replay", str(missing), "--topic", "t", "--bootstrap", "127.0.0.1:1"]) == 2
    (line,) = _err_lines(capsys)
    assert "no such replay file" in line
    notrec = tmp_path / "x.rgr"
    notrec.write_bytes(msgpack.packb({"format": "something else"}))
    assert main(["replay", str(notrec), "--topic", "t", "--bootstrap", "127.0.0.1:1"]) == 2
    (line,) = _err_lines(capsys)
    assert "not a radiusguard-replay file" in line
    valid = tmp_path / "v.npy"
    np.save(valid, np.load(MNIST)["x"][:3])
    assert main(["calibrate", str(FNN), str(valid), "--labels", str(missing),
                 "--max-false-alarm", "0.1", "--out", str(tmp_path / "p.json")]) == 2
    (line,) = _err_lines(capsys)
    assert "no such labels file" in line
    labels = tmp_path / "l.npy"
    np.save(labels, np.zeros(5, dtype=np.int64))
    assert main(["calibrate", str(FNN), str(valid), "--labels", str(labels),
                 "--max-false-alarm", "0.1", "--out", str(tmp_path / "p.json")]) == 2
    (line,) = _err_lines(capsys)
    assert "5 labels for 3 inputs" in line
    assert main(["record", "--topic", "t", "--out", str(tmp_path / "no" / "r.rgr"),
                 "--bootstrap", "127.0.0.1:1"]) == 2
    (line,) = _err_lines(capsys)
    assert "no such directory" in line
    assert main(["demo", "--stream", str(missing), "--model", str(FNN), "--profile",
                 str(tmp_path / "p.json")]) == 2
    (line,) = _err_lines(capsys)
    assert "missing profile" in line and "recording" in line and "--profile" in line


def test_cli_start_does_not_import_torch_and_offers_study() -> None:
    code = ("import sys, worker.cli; p = worker.cli.build_parser(); "
            "names = p._subparsers._group_actions[0].choices; "
            "print('torch' in sys.modules, 'study' in names, sorted(names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, check=True).stdout.split(" ", 2)
    assert out[0] == "False"
    has_study = (ROOT / "study" / "cli.py").is_file()
    assert out[1] == str(has_study)
    for name in ("radius", "calibrate", "serve", "kafka", "produce", "record", "replay", "demo"):
        assert name in out[2]


# ------------------------------------------------------------------------------ calibrate


def test_calibrate_writes_a_profile(tmp_path: Path, capsys) -> None:
    data = np.load(MNIST)
    valid, labels, adv = tmp_path / "v.npy", tmp_path / "y.npy", tmp_path / "noise.npy"
    np.save(valid, data["x"][:40])
    np.save(labels, data["y"][:40])
    np.save(adv, np.random.default_rng(0).uniform(size=(8, 28, 28)))
    out = tmp_path / "p.json"
    rc = main(["calibrate", str(FNN), str(valid), "--labels", str(labels),
               "--max-false-alarm", "0.05", "--attack", f"noise={adv}", "--window", "10",
               "--policy", "distribution", "--jobs", "2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    prof = load_profile(out)
    assert prof.window_size == 10 and prof.policy == "distribution"
    assert prof.model_sha256 == load_onnx(FNN).sha256
    assert set(prof.attacks) == {"noise"} and prof.attacks["noise"].n == 8
    assert f"threshold {prof.threshold:.6g}" in text and "noise: 8 inputs" in text


# ------------------------------------------------------------------------------ config, metrics


def test_service_config_is_checked() -> None:
    base = {"bootstrap": "h:1", "model": "m.onnx", "profile": "p.json"}
    assert ServiceConfig(**base).model == Path("m.onnx")
    for bad in ({"policy": "vote"}, {"max_batch": 0}, {"jobs": 0}, {"bootstrap": ""},
                {"input_topic": "t", "output_topic": "t"}, {"restore_timeout_s": 0}):
        with pytest.raises(ConfigError):
            ServiceConfig(**{**base, **bad})
    cfg = ServiceConfig(**base, input_topic="in", group="g", worker_id="w",
                        kafka={"sasl_plain_password": "pw", "ssl_cafile": "ca.pem"})
    assert (cfg.dlq_topic, cfg.changelog_topic, cfg.transactional_id) == (
        "in.dlq", "in.g.windows", "radiusguard-g-w")
    assert cfg.redacted_kafka() == {"sasl_plain_password": "***", "ssl_cafile": "ca.pem"}


def test_kafka_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"security_protocol": "SSL", "request_timeout_ms": 1000}))
    env = {"RADIUSGUARD_KAFKA_REQUEST_TIMEOUT_MS": "2000", "OTHER": "x"}
    settings = kafka_settings(str(path), env)
    assert settings == {"security_protocol": "SSL", "request_timeout_ms": 2000}
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    assert client_settings(KafkaConsumer, {"isolation_level": "x"}) == {"isolation_level": "x"}
    assert client_settings(KafkaProducer, {"isolation_level": "x"}) == {}
    assert client_settings(KafkaAdminClient, settings) == settings
    with pytest.raises(ConfigError, match="bogus_key"):
        client_settings(KafkaConsumer, {"bogus_key": 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        path.write_text("{")
        kafka_settings(str(path), {})


def test_metrics_routes() -> None:
    m = Metrics()
    assert _route("/readyz", m)[0] == 503
    m.ready = True
    assert _route("/readyz", m)[0] == 200
    assert _route("/healthz", m)[0] == 200
    m.alive = False
    assert _route("/healthz", m)[0] == 503
    m.inputs.labels("accept").inc()
    code, _, body = _route("/metrics", m)
    assert code == 200 and b'radiusguard_inputs_total{verdict="accept"} 1.0' in body
    assert _route("/nope", m)[0] == 404


def test_report_table() -> None:
    t = Tally(first_send=0.0, last_verdict=2.0)
    for cat, verdict in [("cw", "reject"), ("valid", "accept"), ("valid", "reject"),
                         ("custom", "invalid"), ("valid", "accept")]:
        t.add(cat, verdict, 0.05)
    text = format_report(t, 2, "distribution").splitlines()
    assert text[1].split() == ["valid", "3", "66.7%", "33.3%", "0.0%"]
    assert text[2].split()[:2] == ["cw", "1"] and text[3].split()[0] == "custom"
    assert text[4].split()[:2] == ["all", "5"]
    assert "2.5 inputs/s" in text[5] and "p50 50 ms" in text[6]


# ------------------------------------------------------------------------------ through Kafka


@pytest.mark.kafka
def test_produce_record_replay_round_trip(kafka_bootstrap: str, topic_factory, tmp_path: Path,
                                          capsys) -> None:
    data = np.load(MNIST)
    xs, ys = data["x"][:12], data["y"][:12]
    inputs, labels = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(inputs, xs)
    np.save(labels, ys)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        Image.fromarray(xs[i]).save(pngs / f"{i:02d}.png")
    src, dst = topic_factory(4, "src"), topic_factory(4, "dst")
    assert main(["produce", str(inputs), "--stream", "cam-1", "--labels", str(labels),
                 "--rate", "200", "--topic", src, "--bootstrap", kafka_bootstrap]) == 0
    assert main(["produce", str(pngs), "--stream", "cam-2", "--topic", src,
                 "--bootstrap", kafka_bootstrap]) == 0
    rec = tmp_path / "r.rgr"
    assert main(["record", "--topic", src, "--out", str(rec), "--idle", "2",
                 "--bootstrap", kafka_bootstrap]) == 0
    assert "recorded 15 records" in capsys.readouterr().err
    records = list(read_recording(rec))
    assert len(records) == 15
    cam1 = [decode_input(r.key, r.value) for r in records if r.key == b"cam-1"]
    assert [d.id for d in cam1] == [f"cam-1-{i}" for i in range(12)]  # order kept
    assert [d.label for d in cam1] == ys.tolist()
    assert all(np.array_equal(d.x, x / 255.0) and d.shape == (28, 28)
               for d, x in zip(cam1, xs, strict=True))
    cam2 = [decode_input(r.key, r.value) for r in records if r.key == b"cam-2"]
    assert all(np.array_equal(d.x, x / 255.0) for d, x in zip(cam2, xs[:3], strict=True))
    assert [r.ts for r in records] == sorted(r.ts for r in records)

    assert main(["replay", str(rec), "--topic", dst, "--fast", "--streams", "2",
                 "--bootstrap", kafka_bootstrap]) == 0
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None)
    tps = [TopicPartition(dst, p) for p in range(4)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    got: list = []
    deadline = time.monotonic() + 30
    while len(got) < 30 and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=300).values():
            got += msgs
    consumer.close()
    assert len(got) == 30
    assert {m.key for m in got} == {b"cam-1-0", b"cam-1-1", b"cam-2-0", b"cam-2-1"}
    for suffix in (b"-0", b"-1"):
        seq = [m.value for m in sorted(got, key=lambda m: m.offset) if m.key == b"cam-1" + suffix]
        assert seq == [r.value for r in records if r.key == b"cam-1"]


@pytest.fixture(scope="module")
def fnn_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = np.load(MNIST)
    prof = calibrate(load_onnx(FNN), data["x"][:60], data["y"][:60], max_false_alarm=0.03,
                     window_size=20, jobs=2, policy="distribution")
    path = tmp_path_factory.mktemp("profile") / "fnn.profile.json"
    save_profile(prof, path)
    return path


@pytest.mark.kafka
def test_demo_end_to_end(tmp_path: Path, fnn_profile: Path, capsys) -> None:
    net = load_onnx(FNN)
    data = np.load(MNIST)
    x, y = data["x"][400:520], data["y"][400:520]
    pred = net.forward(x.reshape(len(x), -1) / 255.0).argmax(1)
    valid, wrong = x[pred == y][:24], x[pred != y][:4]
    noise = np.random.default_rng(5).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    xs = np.concatenate([valid, wrong, noise])
    cats = ["valid"] * len(valid) + ["misclassified"] * len(wrong) + ["noise"] * len(noise)
    recording = tmp_path / "tiny.rgr"
    recs = records_from_arrays(xs, "cam-1", None, start_ts=0, period_ms=10,
                               meta=[{"category": c} for c in cats])
    recs += [Recorded(b"cam-2", r.value, r.headers, r.ts)
             for r in records_from_arrays(xs[:8], "cam-2", None, start_ts=5, period_ms=10,
                                          meta=[{"category": c} for c in cats[:8]])]
    write_recording(recording, sorted(recs, key=lambda r: r.ts))
    data_dir = tmp_path / "demo"
    rc = main(["demo", "--model", str(FNN), "--profile", str(fnn_profile), "--stream",
               str(recording), "--data-dir", str(data_dir), "--jar-cache", str(JAR_CACHE),
               "--speed", "4", "--timeout", "300", "--policy", "distribution"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert rows["valid"][1] == str(len(valid) + 8)
    assert rows["misclassified"][1] == str(len(wrong))
    assert rows["noise"][1] == str(len(noise))
    assert rows["all"][1] == str(len(xs) + 8)
    assert any(line.startswith("throughput:") for line in lines)
    assert any("p99" in line for line in lines)
    assert "stopping the broker" in captured.err
    cfg = broker.BrokerConfig(data_dir=data_dir / "broker", jar_cache=JAR_CACHE)
    assert broker.status(cfg) is None  # the demo stopped what it started
    for i in range(2):
        assert "stopped" in (data_dir / f"worker-{i}.log").read_text()
