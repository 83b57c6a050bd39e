"""The README and the docs pages: examples run as written, commands and module names exist,
and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXT = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in PAGES}
BLOCKS = [(name, code) for name, text in TEXT.items()
          for code in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)]
SH_BLOCKS = [code for text in TEXT.values()
             for code in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)]
MODULE_REF = re.compile(r"(?<![\w/.])((?:verifier|worker|study|bench)(?:\.[A-Za-z_]\w*)+)")


def _subparsers() -> dict:
    parser = build_parser()
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            return action.choices
    raise AssertionError("radiusguard has no subcommands")


def _commands() -> list[str]:
    """Every `radiusguard ...` invocation in sh blocks and inline code, continuations joined."""
    found = []
    for code in SH_BLOCKS:
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("radiusguard "):
                found.append(line)
    for text in TEXT.values():
        found += [c for c in re.findall(r"`([^`\n]+)`", text) if c.startswith("radiusguard ")]
    return found


def test_the_docs_have_python_examples() -> None:
    names = {name for name, _ in BLOCKS}
    assert {"README.md", "docs/guide.md", "docs/wire-formats.md"} <= names
    assert any("score_many" in code for _, code in BLOCKS)


def test_the_readme_is_short() -> None:
    assert len(TEXT["README.md"].splitlines()) < 150


@pytest.mark.parametrize("name,code", BLOCKS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(BLOCKS)])
def test_python_block_runs_as_written(name: str, code: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, f"{name}:\n{res.stderr[-3000:]}"


def test_documented_commands_and_flags_exist() -> None:
    subs = _subparsers()
    commands = _commands()
    assert len(commands) > 20
    wrong = []
    for line in commands:
        words = line.split()
        sub = words[1] if len(words) > 1 else ""
        if sub not in subs:
            wrong.append(f"{line}: no subcommand {sub!r}")
            continue
        known = {s for a in subs[sub]._actions for s in a.option_strings}
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):
            if flag not in known:
                wrong.append(f"{line}: `radiusguard {sub}` has no {flag}")
    assert not wrong, "\n".join(wrong)


def test_every_subcommand_is_in_the_guide() -> None:
    guide = TEXT["docs/guide.md"]
    missing = [s for s in _subparsers() if f"radiusguard {s}" not in guide]
    assert not missing


def _resolves(ref: str) -> bool:
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ImportError:
            continue
        if n == len(parts):
            return True
        obj = importlib.import_module(name)
        for attr in parts[n:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_module_references_resolve() -> None:
    refs = {m for text in TEXT.values() for m in MODULE_REF.findall(text)}
    assert "worker.processor" in refs
    missing = sorted(r for r in refs if not _resolves(r))
    assert not missing, f"the docs name modules or attributes that do not exist: {missing}"


def test_mkdocs_builds_strict_with_the_whole_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "radiusguard-cli" not in cli  # the marker was replaced
    for name, sub in _subparsers().items():
        assert f"radiusguard {name}</code>" in cli, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):  # every command's; said once at the top
                    continue
                assert f"<code>{flag}" in cli or f", {flag}" in cli, f"{name} {flag}"
    assert (tmp_path / "site" / "reports" / "adaptive").is_dir()
