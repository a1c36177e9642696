"""Output helpers for cli.py: JSON, plain text, and rich only when asked.

rich is imported lazily: ``status`` and ``--version`` never pay for it.
Colour follows rich's rules: none off a TTY, none with NO_COLOR set.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def info(msg: str) -> None:
    """A line for the operator on stderr (never on stdout, which --json owns)."""
    sys.stderr.write(msg + "\n")


def hexint(x: int | None) -> str:
    return "-" if x is None else f"{x:#x}"
