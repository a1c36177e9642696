"""The repository stands on its own: no file points at notes outside it.

What the code relies on is written in the repository (docstrings,
kernel/README.md, the man page) with the kernel or kexec-tools source it
comes from; a pointer to a directory beside the checkout means nothing to
a reader of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# built from parts so that this file does not match itself
OUTSIDE = re.compile("(?:\\.\\./)?" + "shared" + r"/(?:design|seed)\b|\.\./" + "shared" + r"\b")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if line]


def test_no_file_points_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
