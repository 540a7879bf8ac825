"""The parts of ``docs/`` that list what the code declares, generated from the code so that they cannot drift:
the stages (:mod:`backend.stages`), the extractors and matchers (their registries), the options
(:data:`backend.options.OPTIONS`, with every preset's value) and ``reconstruct --help`` as argparse prints it.

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in a page.
``python -m backend.docgen`` rewrites every block; ``python -m backend.docgen --check`` exits 1 and names the pages
whose blocks are out of date (a test runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def stages_table() -> str:
    """The stages in run order: name, title, the app page, what each reads, the config it hashes, its summary."""
    from .stages import stages

    rows = ["| stage | title | app page | reads | config it depends on | run.json summary |",
            "|---|---|---|---|---|---|"]
    for s in stages():
        rows.append(f"| `{s.name}` | {s.title} | {s.page} | {', '.join(f'`{i}`' for i in s.inputs) or '(photos)'} "
                    f"| {', '.join(f'`{c}`' for c in s.config) or '-'} "
                    f"| {', '.join(f'`{k}`' for k, _ in s.summary) or '-'} |")
    return "\n".join(rows) + "\n"


def extractors_table() -> str:
    """Every registered extractor: module, descriptor kind, default matcher, licence, reference."""
    from .features import EXTRACTORS, extractor_class

    rows = ["| `--features` | file | descriptors | default matcher | licence | from |", "|---|---|---|---|---|---|"]
    for name, (module, _, _) in EXTRACTORS.items():
        c = extractor_class(name)
        rows.append(f"| `{name}` | `backend/features/{module}.py` | {c.descriptor_kind} | `{c.default_matcher}` "
                    f"| {_cell(c.licence)} | {_cell(getattr(c, 'reference', ''))} |")
    return "\n".join(rows) + "\n"


def matchers_table() -> str:
    """Every registered matcher: module, the features it accepts, licence, reference."""
    from .matchers import MATCHERS, matcher_class

    rows = ["| `--matcher` | file | matches | licence | from |", "|---|---|---|---|---|"]
    for name, (module, _) in MATCHERS.items():
        c = matcher_class(name)
        accepts = ", ".join(f"`{f}`" for f in c.features) if c.features else \
            " or ".join(c.descriptor_kinds) + " descriptors"
        rows.append(f"| `{name}` | `backend/matchers/{module}.py` | {accepts} | {_cell(c.licence)} "
                    f"| {_cell(c.reference)} |")
    return "\n".join(rows) + "\n"


def options_table() -> str:
    """Every option of :data:`backend.options.OPTIONS`: its flag, what it takes, each preset's value, its help and
    details. The same table builds the CLI's flags, the app's widgets and the API's form fields."""
    from .config import PRESETS
    from .options import OPTIONS

    names = list(PRESETS)
    rows = ["| option | takes | " + " | ".join(f"`{p}`" for p in names) + " | what it does |",
            "|---|---|" + "---|" * len(names) + "---|"]
    for o in OPTIONS:
        values = []
        for p in names:
            v = getattr(getattr(PRESETS[p], o.section), o.key)
            values.append("all cores" if o.name == "mapping_threads" and (v is None or v <= 0) else f"`{v}`")
        text = o.help + (". " + o.details if o.details else "")
        rows.append(f"| `{o.cli_flag}` | {_cell(o.bounds() or o.type.__name__)} | " + " | ".join(values)
                    + f" | {_cell(text)} |")
    return "\n".join(rows) + "\n"


def cli_help(command: str = "reconstruct") -> str:
    """``python -m backend COMMAND --help`` as printed (100 columns), in a fenced block."""
    from .cli import build_parser

    text = _subcommand_help(build_parser(), command)
    return "```text\n" + text.rstrip() + "\n```\n"


def _subcommand_help(parser: argparse.ArgumentParser, command: str) -> str:
    """The help of one subcommand through argparse's public interface: parsing ``COMMAND --help`` prints it."""
    import contextlib
    import io
    import os

    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the subparser's formatter reads the terminal width
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            parser.parse_args([command, "--help"])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def formats_table() -> str:
    """Every export format of :data:`backend.exports.FORMATS`: name, module, what it holds and which tools read it."""
    from .exports import FORMATS

    rows = ["| `--format` | file | what it holds, for which tools |", "|---|---|---|"]
    for name, (module, what) in FORMATS.items():
        rows.append(f"| `{name}` | `backend/exports/{module}.py` | {_cell(what)} |")
    return "\n".join(rows) + "\n"


BLOCKS = {"formats": formats_table, "stages": stages_table, "extractors": extractors_table, "matchers": matchers_table,
          "options": options_table, "cli-reconstruct": cli_help}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from the code.

    Raises:
        KeyError: a block names no generator of :data:`BLOCKS`.
    """
    return _BLOCK.sub(lambda m: m.group(1) + BLOCKS[m.group("name")]() + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backend.docgen", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say which pages are out of date (exit 1 if any)")
    a = ap.parse_args(argv)
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page.name)
            if not a.check:
                page.write_text(new)
    if a.check and stale:
        print("out of date (run python -m backend.docgen): " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("rewrote " if stale else "up to date: ") + (", ".join(stale) or "docs/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
