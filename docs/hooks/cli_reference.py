"""mkdocs hook: the CLI reference page is rendered from `radiusguard`'s argparse parser.

The page `cli.md` holds the marker below; at build time it is replaced by one section per
subcommand (usage, then every argument with its choices, default and help), so the reference
cannot fall behind the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = "<!-- radiusguard-cli -->"
ROOT = Path(__file__).resolve().parents[2]
# Defaults that depend on the machine the site is built on, and what to print instead.
_MACHINE_DEFAULTS = {"jobs": (os.cpu_count() or 1, "the number of CPUs")}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the marker with the reference of the parser of this checkout."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown(_parser()))


def _parser() -> argparse.ArgumentParser:
    """`radiusguard`'s parser, imported from the checkout this hook belongs to."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from worker.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Name -> parser of every subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """Markdown: the global options, then one section per subcommand."""
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
    parts = [_section(parser.prog, parser.description or "", parser, level=2)]
    for name, sub in subcommands(parser).items():
        parts.append(_section(f"{parser.prog} {name}", helps.get(name) or "", sub, level=2))
    return "\n".join(parts)


def _section(title: str, summary: str, p: argparse.ArgumentParser, level: int) -> str:
    rows = [_row(a) for a in p._actions if _documented(a)]
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "92"
    try:
        usage = p.format_usage().strip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    summary = summary[:1].upper() + summary[1:].rstrip(".") + "."
    lines = [f"{'#' * level} `{title}`", "", summary, "", "```text", usage, "```", ""]
    if rows:
        lines += ["| argument | meaning | default |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


def _documented(a: argparse.Action) -> bool:
    return not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)


def _row(a: argparse.Action) -> str:
    name = ", ".join(a.option_strings) if a.option_strings else (a.metavar or a.dest).upper()
    if a.choices is not None and not isinstance(a, argparse._SubParsersAction):
        name += " {" + ",".join(str(c) for c in a.choices) + "}"
    elif a.option_strings and a.nargs != 0:
        name += f" {a.metavar or a.dest.upper()}"
    flags = []
    if a.required and a.option_strings:
        flags.append("required")
    if isinstance(a, argparse._AppendAction):
        flags.append("repeatable")
    text = (a.help or "") + (f" ({', '.join(flags)})" if flags else "")
    return f"| `{name}` | {_cell(text)} | {_cell(_default(a))} |"


def _default(a: argparse.Action) -> str:
    if a.default in (None, False, argparse.SUPPRESS, []) or a.nargs == 0:
        return ""
    machine = _MACHINE_DEFAULTS.get(a.dest)
    if machine is not None and a.default == machine[0]:
        return machine[1]
    text = str(a.default)
    home = str(Path.home())
    if text.startswith(home):
        text = "~" + text[len(home):]
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
