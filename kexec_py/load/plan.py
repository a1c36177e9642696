"""Load plans: what kexec-py will ask the kernel to do, before it asks (pure).

A :class:`Plan` is a system call, an entry point and a list of calls; each
:class:`Call` is one kexec_load (a stage of a staged load, or the one
KS_full call) with its flags and at most 16 segments.  ``--dry-run
--json`` prints :meth:`Plan.to_json`, whose shape is a contract (kexec-py(8),
JSON OUTPUT)::

    {"syscall": "kexec_load", "entry": 1048576,
     "calls": [{"stage": "full", "flags": 4063232,
                "segments": [{"mem": 1048576, "memsz": 4096, "bufsz": 12}]}]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kexec_py.boundary.abi import Stage
from kexec_py.segments import Segment


@dataclass
class Call:
    """One kexec_load call.  ``flags`` includes the stage bits and the
    architecture; ``segments`` are in the order they are passed."""

    stage: Stage
    flags: int
    segments: list[Segment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage.label,
            "flags": self.flags,
            "segments": [{"mem": s.mem, "memsz": s.memsz, "bufsz": s.bufsz}
                         for s in self.segments],
        }


@dataclass
class Plan:
    """A whole load.  ``syscall`` is "kexec_load" or "kexec_file_load"
    (the latter has no segments: the kernel places the image).
    ``notes`` are human-readable remarks for --dry-run output."""

    syscall: str
    entry: int
    calls: list[Call] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        return [s for c in self.calls for s in c.segments]

    @property
    def staged(self) -> bool:
        return any(c.stage != Stage.FULL for c in self.calls)

    def to_json(self) -> dict[str, Any]:
        return {
            "syscall": self.syscall,
            "entry": self.entry,
            "calls": [c.to_json() for c in self.calls],
        }
