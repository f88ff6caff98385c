"""The README and the docs pages hold together: every relative Markdown link in README.md and docs/*.md resolves
to a file inside the repository (and, for ``#anchor``, to a heading of the page it names, by GitHub's slug rule),
and the README stays short enough for a newcomer to read (at most 300 lines)."""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

import orion_assets

ROOT = Path(orion_assets.__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_LINES = 300
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets ("[`[sft] lora`](...)").
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        else:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text lower-cased, every character but letters, digits,
    spaces, hyphens and underscores removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "").lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page, a repeated one with GitHub's ``-1``, ``-2`` suffixes."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        if (match := HEADING.match(line)) is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def missing_paths(page: Path) -> list[str]:
    """``page:line: path`` for each repository path quoted in code (`` `orion_assets/io/io_manager.py` ``) that names
    no file: a module moved and its mention stayed. Only paths under a top-level folder of the repository count,
    and none with a placeholder (``<student>``, ``{port}``, ``*``)."""
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in CODE_SPAN.finditer(line):
            text = match.group(0).strip("`").strip()
            if (re.fullmatch(r"[\w.-]+(/[\w.-]+)+/?", text) and text.split("/")[0] in top
                    and not (ROOT / text).exists()):
                missing.append(f"{page.relative_to(ROOT)}:{number}: {text}")
    return missing


def broken_links(page: Path) -> list[str]:
    """``page:line: target (why)`` for each relative link on ``page`` that does not resolve."""
    broken = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            target = match.group(1)
            if SCHEME.match(target) or target.startswith("//"):
                continue  # a URL: not checked here
            path_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if path_part.startswith("/"):
                broken.append(f"{where} (an absolute path: GitHub resolves it from the site root)")
                continue
            resolved = (page.parent / unquote(path_part)).resolve() if path_part else page
            if not resolved.is_relative_to(ROOT):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
                broken.append(f"{where} (no heading with this anchor in {resolved.relative_to(ROOT)})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_quoted_repository_path_exists(page: Path) -> None:
    missing = missing_paths(page)
    assert not missing, "paths that name no file (moved?):\n" + "\n".join(missing)


def test_the_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


@pytest.mark.parametrize(("heading", "anchor"), [
    ("### 8. Scaling out", "8-scaling-out"),
    ("## `orion check`: the preflight", "orion-check-the-preflight"),
    ("#### Common problems ([sft] `common_problems`)", "common-problems-sft-common_problems"),
    ("### 1. Per-row rules (`rules.row_drop_reasons`)", "1-per-row-rules-rulesrow_drop_reasons"),
    ("## Your own assets on [`DuckDBResource`](https://docs.dagster.io)", "your-own-assets-on-duckdbresource"),
    ("## Δ over `base` [95%]", "δ-over-base-95"),
])
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(HEADING.match(heading).group(2)) == anchor


def test_the_checker_finds_what_is_broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file, a missing anchor, a path outside the repository; links in code are not links."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its part\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n[ok](docs/a.md#its-part) [ok](#top) [url](https://example.com/x.md) `[code](nowhere.md)`\n"
        "[gone](docs/b.md) [anchor](docs/a.md#6-scaling-out) [out](../shared/DESIGN.md) [self](#nothing)\n"
        "```\n[fenced](nowhere.md)\n```\n")
    assert [line.split(" (")[0] for line in broken_links(page)] == [
        "README.md:4: docs/b.md", "README.md:4: docs/a.md#6-scaling-out", "README.md:4: ../shared/DESIGN.md",
        "README.md:4: #nothing"]
