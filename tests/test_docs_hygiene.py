"""Committed docs and records name no machine's folders: every text file under docs/ (the results
records included) and README.md hold paths relative to the repository or a run, or a neutral
spelling (``/path/to/data``), never a machine's absolute path; and ``../shared`` (where this
repository's development machines keep the data) appears only in README's marked paragraph for
those machines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".json", ".yaml", ".yml", ".txt"}
# the start of an absolute path: "/" and a name and "/" where a path begins (not inside a relative
# path, a URL, "~/...", "${...}/..." or "<mark>/..."), a machine's usual roots even without the
# second "/", or a Windows drive
ABSOLUTE = re.compile(
    r"(?<![\w.:/~\]\)}>$*,-])/\w[\w.-]*/"
    r"|(?<![\w.:/~\]\)}>$*,-])/(?:work|root|home|tmp|Users|mnt|scratch|private|var)\b"
    r"|\b[A-Za-z]:\\"
)
# not a machine's folders: the neutral spelling of a user's folder, and the system's own
ALLOWED = ("/path/to/", "/bin/", "/usr/", "/proc/", "/dev/", "/etc/", "/sys/")
SHARED = "../shared"
DEV_START, DEV_END = "<!-- development-machines:start -->", "<!-- development-machines:end -->"


def absolute_paths(line: str) -> list[str]:
    """The absolute paths ``line`` names (their first component), less :data:`ALLOWED`."""
    return [m.group() for m in ABSOLUTE.finditer(line) if not line[m.start() :].startswith(ALLOWED)]


def checked_files() -> list[Path]:
    docs = [p for p in sorted((ROOT / "docs").rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES]
    return [ROOT / "README.md", *docs]


def development_lines(path: Path, lines: list[str]) -> set[int]:
    """The line numbers of README's marked paragraph for this repository's development machines."""
    if path.name != "README.md" or DEV_START not in lines:
        return set()
    start = lines.index(DEV_START)
    end = lines.index(DEV_END, start)
    return set(range(start + 1, end + 2))


def problems(path: Path) -> list[str]:
    """``file:line: what`` for each absolute path and each ``../shared`` outside the marked lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    excused = development_lines(path, lines)
    found = []
    for number, line in enumerate(lines, 1):
        if number in excused:
            continue
        where = f"{path.relative_to(ROOT)}:{number}"
        found += [f"{where}: absolute path {hit!r} in {line.strip()[:100]!r}" for hit in absolute_paths(line)]
        if SHARED in line:
            found.append(f"{where}: {SHARED!r} outside README's development-machines paragraph")
    return found


def test_the_scan_finds_machine_paths_and_leaves_the_rest():
    for line in (
        "Produced by `python -m vaelab.results --runs-dir /work/runs/results`",
        '  "checkpoint": "/home/alice/runs/x/last.ckpt",',
        "  data_dir: /tmp/data",
        "- ckpt_path=/root/x.ckpt",
        "under `/work`",
        "see /Users/bob/data/",
        r'"C:\\Users\\bob"',
        "paths.data_dir=/fast/disk/data",
    ):
        assert absolute_paths(line), line
    for line in (
        "https://github.com/a/b/ and mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        "`docs/results/<row>/`, outputs/<date>/<time>/checkpoints/last.ckpt, ~/.cache/vaelab",
        "  cache_dir: ${oc.env:XDG_CACHE_HOME,${oc.env:HOME,/tmp}/.cache}/vaelab",
        '  "checkpoint": "checkpoints/last.ckpt", "run": "<runs-dir>/mnist_vae"',
        "  root: <data-dir>/celeba_sample",
        "paths.data_dir=/path/to/data, #!/bin/bash, `/proc/stat`, NLL/(D ln 2), (k + u)/256",
    ):
        assert not absolute_paths(line), line


def test_the_development_paragraph_is_marked_once_in_the_development_section():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(DEV_START) == 1 and text.count(DEV_END) == 1
    start = text.index(DEV_START)
    assert start < text.index(DEV_END)
    assert text.rfind("\n## ", 0, start) == text.index("\n## Development")


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_path_in_committed_docs(path):
    found = problems(path)
    assert not found, "machine paths in committed files:\n" + "\n".join(found)
