"""What users read: the README is a short product page whose example runs, no user-facing text
(README, docs, docstrings, CLI help, config comments) talks about issues, commits or the
machine a number came from (that is what results files are for), docstrings carry no
timings, and every relative link in the Markdown pages resolves."""

from __future__ import annotations

import ast
import re
import tokenize
import unicodedata
from pathlib import Path

import pytest

from spikeforge.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
SOURCES = sorted((REPO / "spikeforge").rglob("*.py"))
MAX_README_LINES = 160

#: phrases that belong in a results file's provenance or in the issue tracker, not in text
#: users read
FORBIDDEN = re.compile("|".join([
    r"\bissues?\s+#?\d+",                                    # "issue 5", "issues 4, 5"
    r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b",  # a commit hash
    r"\bthis (?:machine|VM)\b",
    r"\bquiet (?:VM|machine)\b",
    r"(?-i:\bDESIGN\.md\b)",              # the design notes outside the repo (docs/design.md)
]), re.IGNORECASE)
OUTSIDE = re.compile(r"\bDESIGN\.md\b")
#: a commit hash is lower-case hex; the IGNORECASE above is for the words
HASH = re.compile(r"[0-9a-f]{7,40}")
#: measured speed in a docstring ("1.18x faster", "1100 images/s", "159 s measured")
TIMING = re.compile(r"\d[\d.]*(?:\s*[–-]\s*[\d.]+)?\s*[x×]\s+(?:faster|slower)\b"
                    r"|\bimages/s\b|\d+(?:\.\d+)?\s*(?:ms|s) measured\b", re.IGNORECASE)


def _hits(text: str, pattern: re.Pattern[str] = FORBIDDEN, first_line: int = 1) -> list[str]:
    found = []
    for m in pattern.finditer(text):
        phrase = m.group(0)
        if pattern is FORBIDDEN and re.fullmatch(r"[0-9a-fA-F]+", phrase) \
                and not HASH.fullmatch(phrase):
            continue  # upper-case hex is not a commit
        found.append(f"line {first_line + text.count(chr(10), 0, m.start())}: {phrase!r}")
    return found


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of the module's, classes' and functions' docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.append((body[0].lineno, body[0].value.value))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("path", [*PAGES, *CONFIGS], ids=_rel)
def test_pages_and_configs_name_no_issue_commit_or_machine(path):
    hits = _hits(path.read_text())
    assert not hits, f"{_rel(path)}: " + "; ".join(hits)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_docstrings_name_no_issue_commit_or_machine_and_no_timings(path):
    hits = [f"{kind} {hit}" for line, text in _docstrings(path)
            for kind, pattern in (("phrase", FORBIDDEN), ("timing", TIMING))
            for hit in _hits(text, pattern, line)]
    with tokenize.open(path) as f:  # comments too may not send readers outside the repository
        hits += [f"comment {hit}" for tok in tokenize.generate_tokens(f.readline)
                 if tok.type == tokenize.COMMENT
                 for hit in _hits(tok.string, OUTSIDE, tok.start[0])]
    assert not hits, f"{_rel(path)}: " + "; ".join(hits)


def _subcommands() -> dict[str, object]:
    parser = build_parser()
    return {"spikeforge": parser, **parser._subparsers._group_actions[0].choices}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_cli_help_names_no_issue_commit_or_machine(command):
    text = _subcommands()[command].format_help()
    hits = _hits(text)
    assert not hits, f"spikeforge {command} --help: " + "; ".join(hits)


def test_the_checks_catch_what_they_are_for():
    text = ("see issue 5; commit 8fe964e; measured on this machine; the quiet VM; "
            "DESIGN.md §2; at deadbeef00")
    assert len(_hits(text)) == 6
    for fine in ("threshold balancing at T = 64", "CS-QCFS L = 4", "1.0e-02", "issue tracker",
                 "DEADBEEF", "decade", "f68b3c2dcbeaaa9fbdd348bbdeb94873deadbeef0123"):
        assert not _hits(fine), fine
    assert _hits("a step is 1.18x faster", TIMING) and _hits("1.2–1.5× faster", TIMING)
    assert _hits("about 1100 training images/s", TIMING)
    assert not _hits("faster than one huge call", TIMING)


# ---------------------------------------------------------------- links


FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)"
                  r"|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a ``#`` there is not a heading)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for heading in HEADING.findall(_prose(page.read_text())):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _links(page: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", _prose(page.read_text()))  # code spans are not links
    return [a or b for a, b in LINK.findall(prose)]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif not resolved.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{_rel(page)}: " + "; ".join(broken)


def test_link_checker_sees_links_and_headings():
    assert _slug("`precision.py`: what bf16 and int8 cost in accuracy") == \
        "precisionpy-what-bf16-and-int8-cost-in-accuracy"
    assert _slug("ANN → SNN conversion") == "ann--snn-conversion"
    assert _slug("1. The methods") == "1-the-methods"
    text = "[a](docs/x.md#y) ![p](img.png) `[no](code.md)`\n```\n[no](fenced.md)\n```\n"
    links = LINK.findall(re.sub(r"`[^`\n]*`", "", _prose(text)))
    assert [a or b for a, b in links] == ["docs/x.md#y", "img.png"]


# ---------------------------------------------------------------- the README


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_readme_python_example_runs(monkeypatch):
    monkeypatch.chdir(REPO)  # the example loads a network committed in results/
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README.md has no Python example"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[block {i}]", "exec"), namespace)
    assert len(namespace["res"].accuracy) == namespace["out"].shape[0]
    assert namespace["res"].accuracy[-1] > 95  # a trained network, converted
