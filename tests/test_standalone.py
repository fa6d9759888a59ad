"""The project stands alone: no tracked file points at a folder beside the
repository (a clone must build, test and document itself with nothing next to it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Built from parts so that this file does not contain what it looks for: the
# folder, the variable that once pointed at it, and its sub-folders by name.
FOLDER = "shared"
FORBIDDEN = ["../" + FOLDER, "SIPSUITE_" + FOLDER.upper(), "/work/" + FOLDER,
             *(f"{FOLDER}/{sub}" for sub in ("sipp", "bench", "conformance"))]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def test_no_tracked_file_names_the_folder_beside_the_repo() -> None:
    files = tracked_files()
    assert len(files) > 100, "git ls-files found too little: not a checkout?"
    hits = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        hits += [f"{path.relative_to(REPO)}: {word}" for word in FORBIDDEN if word.encode() in data]
    assert not hits, "\n".join(hits)
