"""The docs a newcomer reads: the README starts with the two commands CI runs, links only to pages that exist, and
the parts of docs/ that list stages, methods and options are generated from the code (backend/docgen.py)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_readme_starts_with_the_two_commands_and_stays_short():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[0] == "bash setup/setup.sh && bash setup/start_app.sh"
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = re.search(r"^TEST_CMD='(.*)'$", ci, flags=re.M).group(1)
    assert blocks[1] == test_cmd and text.index(blocks[0]) < text.index(blocks[1]) < text.index("## ")
    assert len(text.splitlines()) <= 150


def test_every_link_of_the_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_generated_docs_match_the_code():
    """A stage, method or option added without regenerating the docs fails here (run python -m backend.docgen)."""
    res = subprocess.run([sys.executable, "-m", "backend.docgen", "--check"], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    from backend.docgen import stages_table
    from backend.stages import stage_names

    assert all(f"| `{name}` |" in stages_table() for name in stage_names())
