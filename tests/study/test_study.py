"""The study pipeline end to end on a tiny config, its report, cache, config parsing and CLI."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("art")
pytest.importorskip("onnx2torch")
pytest.importorskip("matplotlib")

from study import attacks as attacks_mod  # noqa: E402
from study import run as run_mod  # noqa: E402
from study.cli import register  # noqa: E402
from study.report import TABLE1_COLUMNS, THRESHOLDS, auc_of, roc_points  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fnn-3x30-relu.onnx"
SLICE = ROOT / "models" / "mnist_test_1000.npz"
CATEGORIES = ("valid", "misclassified", "fgsm_0.1", "fgsm_0.05")

pytestmark = pytest.mark.skipif(
    not (MODEL.is_file() and SLICE.is_file()), reason="shipped model or MNIST slice missing"
)


def tiny_config(n: int = 4) -> run_mod.StudyConfig:
    raw = {
        "study": {"n": n, "data": str(SLICE), "jobs": 1, "torch_threads": 1,
                  "exact_n": 2, "exact_time_limit": 5.0, "exact_categories": ["fgsm_0.1"]},
        "algorithm2": {"s": 8, "n_valid": n, "n_adversarial": n, "shuffles": 2},
        "attacks": {"fgsm_0.1": {"kind": "fgsm", "eps": 0.1},
                    "fgsm_0.05": {"kind": "fgsm", "eps": 0.05}},
        "networks": [
            {"name": "fnn-3x30-relu", "onnx": str(MODEL)},
            # Table I only: fewer inputs, first selection, more valid radii for the p-value.
            {"name": "fnn-3x30-relu-t1", "onnx": str(MODEL), "n": 3, "valid_n": 9,
             "selections": ["first"], "detail": False, "exact": False},
        ],
    }
    return run_mod.config_from_dict(raw, source="tiny")


@pytest.fixture(scope="module")
def study_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    report = run_mod.run_study(tiny_config(), out)
    assert report == out / "report.md"
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table1_is_complete_and_finite(study_out: Path) -> None:
    rows = _rows(study_out / "table1.csv")
    assert [r["network"] for r in rows] == ["fnn-3x30-relu", "fnn-3x30-relu-t1"]
    assert list(rows[0]) == list(TABLE1_COLUMNS)
    row = rows[0]
    assert row["network"] == "fnn-3x30-relu" and row["activation"] == "relu"
    for col in ("accuracy", "valid", "mis", "fgsm_0.1", "fgsm_0.05", "seconds_per_call"):
        assert math.isfinite(float(row[col])), col
    assert row["cw"] == "" and row["hop"] == ""  # not run in this config
    assert 0.9 < float(row["accuracy"]) <= 1.0
    assert float(row["valid"]) > float(row["fgsm_0.1"])


def test_per_network_settings_shape_the_sets(study_out: Path) -> None:
    results = json.loads((study_out / "results.json").read_text())
    main, t1 = results["networks"]
    assert (main["n"], main["valid_n"], main["selections"]) == (4, 4, ["first", "random"])
    assert (t1["n"], t1["valid_n"], t1["selections"], t1["detail"]) == (3, 9, ["first"], False)
    assert len(t1["sets"]["valid"]["first"]["radius"]) == 9
    assert all(set(s) == {"first"} for s in t1["sets"].values())
    assert len(t1["sets"]["fgsm_0.1"]["first"]["radius"]) == 3
    assert "exact" not in t1
    # The Table I mean of valid radii is over the first n, like every other category.
    row = _rows(study_out / "table1.csv")[1]
    valid = t1["sets"]["valid"]["first"]["radius"][:3]
    assert float(row["valid"]) == pytest.approx(float(np.mean(valid)))
    # Networks outside the detailed set get no figures and no Algorithm 2 rows.
    assert not (study_out / "roc_fnn-3x30-relu-t1.png").exists()
    assert all(r["network"] == "fnn-3x30-relu" for r in _rows(study_out / "algorithm2.csv"))


def test_table2_covers_every_category_selection_and_threshold(study_out: Path) -> None:
    rows = [r for r in _rows(study_out / "table2.csv") if r["network"] == "fnn-3x30-relu"]
    keys = {(r["selection"], r["category"]) for r in rows}
    assert keys == set(itertools.product(("first", "random"), CATEGORIES))
    for r in rows:
        assert int(r["n"]) == 4
        rates = [float(r[f"{t:.3f}"]) for t in THRESHOLDS]
        assert all(0.0 <= v <= 1.0 for v in rates)
        assert rates == sorted(rates)  # rejecting below a larger threshold rejects more


def test_roc_files_and_auc_match_the_report(study_out: Path) -> None:
    for name in ("roc", "counts", "hist"):
        assert (study_out / f"{name}_fnn-3x30-relu.png").stat().st_size > 1000
    points = [r for r in _rows(study_out / "roc.csv") if r["network"] == "fnn-3x30-relu"]
    aucs = {r["category"]: float(r["auc"]) for r in _rows(study_out / "auc.csv")
            if r["network"] == "fnn-3x30-relu"}
    assert set(aucs) == set(CATEGORIES) - {"valid"}
    report = (study_out / "report.md").read_text()
    for cat, auc in aucs.items():
        pts = [(float(p["threshold"]), float(p["fpr"]), float(p["tpr"]))
               for p in points if p["category"] == cat]
        assert pts[0][1:] == (0.0, 0.0) and pts[-1][1:] == (1.0, 1.0)
        recomputed = float(np.trapezoid([p[2] for p in pts], [p[1] for p in pts]))
        assert recomputed == pytest.approx(auc, abs=1e-12)
        assert re.search(rf"\| fnn-3x30-relu \| {re.escape(cat)} \| \d+ \| \d+ \| "
                         rf"{recomputed:.4f} \|", report), cat


def test_report_states_paper_findings_with_verdicts(study_out: Path) -> None:
    report = (study_out / "report.md").read_text()
    sections = report.split("\n## ")[1:]
    assert len(sections) >= 8
    for section in sections:
        assert "Paper" in section, section.splitlines()[0]
        undecided = ("not reproduced", "Not run", "no network had enough data", "no counterpart")
        if not any(u in section for u in undecided):
            assert "**confirms**" in section or "**contradicts**" in section, section[:60]
    assert (study_out / "algorithm2.csv").is_file()
    alg2 = _rows(study_out / "algorithm2.csv")
    assert {r["sigmas"] for r in alg2} == {"paper", "calibrated"}
    assert {r["order"] for r in alg2} == {"sequence", "shuffle-0", "shuffle-1"}


def test_budget_table_gives_tau_for_each_false_alarm_share(study_out: Path) -> None:
    rows = _rows(study_out / "budget.csv")
    names = {r["network"] for r in rows}
    assert "fnn-3x30-relu" in names
    for name in names:
        pts = sorted((float(r["false_alarm"]), float(r["tau"])) for r in rows
                     if r["network"] == name)
        taus = [t for _, t in pts]
        assert taus == sorted(taus) and taus[0] >= 0  # more false alarms buy a larger tau
    assert (study_out / "budget.png").stat().st_size > 1000
    assert "## The guaranteed budget against false alarms" in (study_out / "report.md").read_text()


def test_rerun_resumes_from_the_cache(study_out: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(attacks_mod, "generate", boom)
    monkeypatch.setattr(run_mod, "score_many", boom)
    before = (study_out / "table2.csv").read_text()
    run_mod.run_study(tiny_config(), study_out)
    assert (study_out / "table2.csv").read_text() == before


def test_roc_auc_equals_pairwise_probability() -> None:
    rng = np.random.default_rng(3)
    valid = np.round(rng.normal(0.02, 0.005, 40), 3)
    adv = np.round(rng.normal(0.012, 0.006, 30), 3)
    pairs = [(1.0 if a < v else 0.5 if a == v else 0.0) for v in valid for a in adv]
    assert auc_of(roc_points(valid, adv)) == pytest.approx(np.mean(pairs), abs=1e-12)


def test_attack_cache_key_covers_model_params_and_indices() -> None:
    spec = attacks_mod.attack_spec("fgsm_0.1")
    base = attacks_mod.cache_key("a" * 64, spec, [1, 2, 3])
    assert base != attacks_mod.cache_key("b" * 64, spec, [1, 2, 3])
    assert base != attacks_mod.cache_key("a" * 64, spec, [1, 2, 4])
    assert base != attacks_mod.cache_key("a" * 64, attacks_mod.attack_spec("fgsm_0.05"), [1, 2, 3])
    with pytest.raises(ValueError, match="unknown"):
        attacks_mod.attack_spec("cw", {"max_iters": 3}).describe()


def test_config_errors_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nn = 3\n")
    with pytest.raises(run_mod.ConfigError, match="networks"):
        run_mod.load_config(bad)
    bad.write_text(f'[study]\nbogus = 1\n[[networks]]\nname = "x"\nonnx = "{MODEL}"\n')
    with pytest.raises(run_mod.ConfigError, match="bogus"):
        run_mod.load_config(bad)
    bad.write_text('[[networks]]\nname = "x"\nonnx = "nowhere.onnx"\n')
    with pytest.raises(run_mod.ConfigError, match="not found"):
        run_mod.load_config(bad)


def test_shipped_configs_parse() -> None:
    for name in ("quick.toml", "full.toml", "cifar.toml"):
        cfg = run_mod.load_config(ROOT / "study" / "configs" / name)
        assert cfg.categories == ("valid", "misclassified", "fgsm_0.1", "fgsm_0.05", "cw", "hop")


def test_full_config_is_the_papers_table1_set() -> None:
    from study import paper
    from study.nets import parse_net_name

    cfg = run_mod.load_config(ROOT / "study" / "configs" / "full.toml")
    assert {n.name for n in cfg.networks} == {n for n in paper.TABLE1 if n.startswith(("fnn", "cnn"))}
    for net in cfg.networks:
        parse_net_name(net.arch())  # every network is buildable by study.train
        assert net.onnx is not None or net.train_epochs
    cnn = next(n for n in cfg.networks if n.name == paper.TABLE2_NETWORK)
    assert cfg.n_of(cnn) == 100 and cfg.selections_of(cnn) == ("first", "random")
    seeds = {n.train_seed for n in cfg.networks if n.arch() == "fnn-3x30-relu" and n.train_epochs}
    assert seeds == {1, 2}
    # --n overrides every per-network count.
    small = run_mod.load_config(ROOT / "study" / "configs" / "full.toml", n=2)
    assert {(small.n_of(n), small.valid_n_of(n)) for n in small.networks} == {(2, 2)}


def test_per_network_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for entry, match in [
        ('onnx = "MODEL"\nselections = ["random"]', "selections"),
        ('onnx = "MODEL"\nbogus = 2', "bogus"),
        ('train = { epochs = 1, speed = 3 }', "train takes"),
        ('onnx = "MODEL"\nn = 0', "n must be"),
    ]:
        bad.write_text('[[networks]]\nname = "x"\n' + entry.replace("MODEL", str(MODEL)) + "\n")
        with pytest.raises(run_mod.ConfigError, match=match):
            run_mod.load_config(bad)


def test_cli_registers_the_study_subcommand(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "--config", "c.toml", "--out", str(tmp_path), "--n", "3"])
    assert args.func.__name__ == "cmd_study" and args.n == 3 and args.out == tmp_path


def test_network_subset_selection() -> None:
    cfg = tiny_config()
    assert run_mod.select_networks(cfg, ["fnn-3x30-relu"]).networks == cfg.networks[:1]
    with pytest.raises(run_mod.ConfigError, match="not in the config"):
        run_mod.select_networks(cfg, ["cnn-9-9-9-relu"])


def test_hopskipjump_is_reproducible_and_adversarial() -> None:
    from verifier.onnx.importer import load_onnx

    net = load_onnx(MODEL)
    with np.load(SLICE) as z:
        x = z["x"][:3].reshape(3, 1, 28, 28).astype(np.float32) / 255
        y = z["y"][:3].astype(np.int64)
    spec = attacks_mod.attack_spec("hop", {"max_iter": 2, "max_eval": 100, "init_eval": 10})
    clf = attacks_mod.LazyClassifier(MODEL, net.input_shape, net.n_outputs)
    adv1, ok1 = attacks_mod.generate(net, MODEL, spec, x, y, clf)
    adv2, ok2 = attacks_mod.generate(net, MODEL, spec, x, y, clf)
    assert np.array_equal(adv1, adv2) and np.array_equal(ok1, ok2)
    assert ok1.any()
    for a, label, ok in zip(adv1, y, ok1, strict=True):
        assert (net.predict(a) != label) == ok
