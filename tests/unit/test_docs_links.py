"""Every relative link in the README, the pages in docs/ and the benchmark results' READMEs leads somewhere.

A page moved or renamed, or a heading reworded, would otherwise leave a newcomer at a dead end. Anchors are checked
against the headings of the page they point into, spelled as GitHub spells them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def documents() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return pages + sorted((REPO / "bench/results").glob("*/README.md"))


def prose(text: str) -> str:
    """The text outside fenced code blocks, with code spans blanked but link targets kept."""
    return CODE_SPAN.sub("code", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: links reduced to their text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base, n = slug(heading), 0
        name = base
        while name in found:  # repeated headings get -1, -2, ...
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif not dest.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
        elif anchor and (dest.suffix != ".md" or anchor.lower() not in anchors(dest)):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(root)}")
    return broken


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_readme_stays_an_entry_point_that_names_the_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "./scripts/test" in readme and "./scripts/run" in readme
    assert len(readme.splitlines()) <= 160, "reference belongs in docs/, one page per component"


def test_the_link_checker_sees_broken_links_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Two words `x`\n\n[ok](#two-words-x) [ok](a.md#title)\n")
    page = tmp_path / "b.md"
    page.write_text("[bad](missing.md) [bad](a.md#nope) `[not a link](gone.md)`\n```\n[code](gone.md)\n```\n")
    assert broken_links(tmp_path / "a.md", tmp_path) == []
    assert [b.split(":")[0] for b in broken_links(page, tmp_path)] == ["missing.md", "a.md#nope"]
