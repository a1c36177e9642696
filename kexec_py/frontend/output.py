"""Output helpers for cli.py: JSON, plain text, and rich only when asked.

rich is imported lazily: ``status`` and ``--version`` never pay for it.
Colour follows rich's rules: none off a TTY, none with NO_COLOR set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def no_color() -> bool:
    """NO_COLOR (https://no-color.org) is set and not empty."""
    return bool(os.environ.get("NO_COLOR"))


def console(stderr: bool = False) -> Console:
    """A rich console: styles only on a terminal (rich's own rule), and none
    at all, not even bold, when NO_COLOR is set."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False,
                   color_system=None if no_color() else "auto")


class ProgressBar:
    """A progress bar on stderr for work that may take more than a second.

    It appears only on a terminal (stderr a TTY), never with ``--json``, and
    only once the work has run for ``delay`` seconds: short operations never
    import rich.  Use as a context manager; call :meth:`update` with the
    amount done so far."""

    def __init__(self, total: int, description: str, enabled: bool = True,
                 delay: float = 1.0, unit: str = "bytes") -> None:
        self.total = total
        self.description = description
        self.enabled = enabled and sys.stderr.isatty()
        self.delay = delay
        self.unit = unit
        self._t0 = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        self._t0 = time.monotonic()
        return self

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        if self._bar is None:
            if time.monotonic() - self._t0 < self.delay:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            count = (DownloadColumn() if self.unit == "bytes"
                     else TextColumn("{task.completed}/{task.total}"))
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), count,
                                 TimeRemainingColumn(), console=console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        self._bar.update(self._task, completed=done, total=self.total,
                         description=self.description)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def info(msg: str) -> None:
    """A line for the operator on stderr (never on stdout, which --json owns)."""
    sys.stderr.write(msg + "\n")


def hexint(x: int | None) -> str:
    return "-" if x is None else f"{x:#x}"
