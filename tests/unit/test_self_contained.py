"""A clone stands on its own: no test, script, bench or document reads or names a folder beside the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".json", ".c", ".tpl", ""}
# A checkout's neighbour folder, as a relative path or a path joined from the repository's parent.
BESIDE = re.compile(r"\.\./shared\b|\bshared/(fixtures|docs)\b|parent\s*/\s*[\"']shared")


def repository_text_files() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES and path != Path(__file__).resolve() and path.stat().st_size < 2**20:
            found.append(path)
    return found


def test_no_file_reads_or_names_a_folder_beside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in repository_text_files()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if BESIDE.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_replay_recording_is_in_the_repository_with_its_provenance() -> None:
    here = REPO / "tests/fixtures/umockdev"
    assert (here / "hpe-proliant-all.umockdev").stat().st_size > 1_000_000
    assert "Apache License 2.0" in (here / "README.md").read_text()
