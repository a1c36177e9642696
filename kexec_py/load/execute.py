"""Loading a kernel: the choice of system call, the plan, and the call.

The front ends turn options into a :class:`~kexec_py.load.request.LoadRequest`;
this module opens its files once (:func:`open_inputs`), decides how to load
it and talks to a backend.  Nothing here prints.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from kexec_py.arch.x86 import bootparams
from kexec_py.boundary import abi
from kexec_py.boundary.backends import Backend
from kexec_py.errors import PlanError, SyscallError, UnsupportedError
from kexec_py.load.image import InputFile, MappedFile, open_input
from kexec_py.load.kernel import kexec_load_flags, plan_kernel
from kexec_py.load.plan import Call, Plan
from kexec_py.load.request import FALLBACK_ERRNOS, LoadRequest
from kexec_py.load.staging import StagedPlan, call_budget, plan_load
from kexec_py.memmap import MemoryMap
from kexec_py.segments import X86_64_DESTINATION_LIMIT, Segment, check_segments

__all__ = ["Inputs", "LoadResult", "dry_run_plan", "file_load_flags", "load", "open_inputs",
           "pack_plan", "plan_kexec_load", "plan_staged_kernel", "unload"]


@dataclass
class LoadResult:
    syscall: str
    flags: int
    kernel: str
    initrd: str | None
    cmdline: str | None
    #: the kexec_file_load error that made "auto" fall back, if any
    fallback_from: str | None = None
    #: the kexec_load plan that was carried out (None for kexec_file_load)
    plan: Plan | None = None


@dataclass
class Inputs:
    """The kernel (open and mapped: its format is known) and the initrd
    (open; mapped when kexec-py places it) of one load."""

    kernel: InputFile
    initrd: InputFile | None

    @property
    def image(self) -> MappedFile:
        return self.kernel.mapped()

    def initrd_image(self) -> MappedFile | None:
        return self.initrd.mapped() if self.initrd is not None else None


@contextmanager
def open_inputs(req: LoadRequest) -> Iterator[Inputs]:
    """Open the request's files once: the kernel is mapped and its format
    sniffed here, and everything after uses that mapping and descriptor."""
    kernel = open_input(req.kernel, "kernel")
    initrd: InputFile | None = None
    try:
        kernel.mapped()
        if req.initrd is not None:
            initrd = open_input(req.initrd, "initrd")
        yield Inputs(kernel, initrd)
    finally:
        kernel.close()
        if initrd is not None:
            initrd.close()


def file_load_flags(req: LoadRequest) -> int:
    flags = 0
    if req.crash:
        flags |= abi.KEXEC_FILE_ON_CRASH
    if req.initrd is None:
        flags |= abi.KEXEC_FILE_NO_INITRAMFS
    return flags


def _load_file(backend: Backend, req: LoadRequest, inputs: Inputs) -> LoadResult:
    """Load with kexec_file_load(2): the kernel parses the image itself."""
    flags = file_load_flags(req)
    cmd = req.cmdline.encode() if req.cmdline is not None else None
    try:
        backend.kexec_file_load(inputs.kernel.fd,
                                inputs.initrd.fd if inputs.initrd is not None else -1,
                                cmd, flags)
    except SyscallError as e:
        if e.errno == errno.ENOEXEC:
            e.message += f" for {req.kernel}"
        raise
    return LoadResult("kexec_file_load", flags, str(req.kernel),
                      str(req.initrd) if req.initrd else None, req.cmdline)


def unload(backend: Backend, crash: bool) -> str:
    """Unload the normal (or crash) image.  kexec_load with no segments
    unloads; where kexec_load is missing, kexec_file_load's UNLOAD flag.
    Returns the syscall that did it."""
    try:
        backend.kexec_load(0, [], abi.KEXEC_ON_CRASH if crash else 0)
        return "kexec_load"
    except SyscallError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        first = e
    flags = abi.KEXEC_FILE_UNLOAD | (abi.KEXEC_FILE_ON_CRASH if crash else 0)
    try:
        backend.kexec_file_load(-1, -1, None, flags)
    except SyscallError as e:
        raise first if e.errno == errno.ENOSYS else e from None
    return "kexec_file_load"


def pack_plan(segments: Sequence[Segment], entry: int, flags: int, notes: list[str],
              ram_bytes: int | None) -> Plan:
    """One KS_full kexec_load call, checked against the kernel's rules
    (:func:`check_segments`) so that a refusal comes with a better message
    than an errno."""
    check_segments(segments, ram_bytes=ram_bytes, limit=X86_64_DESTINATION_LIMIT)
    return Plan("kexec_load", entry, [Call(abi.Stage.FULL, flags, list(segments))], notes)


def plan_kexec_load(backend: Backend, req: LoadRequest, rng_seed: bytes | None = None,
                    inputs: Inputs | None = None) -> Plan:
    """The kexec_load plan for ``req``, against ``backend``'s memory map.
    Calls nothing.  ``inputs``: the request's files, if the caller has
    opened them."""
    req.refuse_crash_kexec_load()
    if inputs is None:
        with open_inputs(req) as opened:
            return plan_kexec_load(backend, req, rng_seed, opened)
    memmap = backend.memory_map()
    ks = plan_kernel(backend, req, inputs.image, inputs.initrd_image(), memmap,
                     rng_seed=rng_seed)
    ram = MemoryMap.of(memmap).ram_bytes()
    if req.preserve_context:
        total = sum(s.memsz for s in ks.segments)
        if total > ram // 2:
            raise PlanError(
                f"--load-preserve-context fills the --mem-min/--mem-max window: "
                f"{total:#x} bytes of segments, more than half of RAM ({ram // 2:#x})",
                "give a window smaller than half of RAM with --mem-min/--mem-max")
    return pack_plan(ks.segments, ks.entry, kexec_load_flags(req.preserve_context), ks.notes,
                     ram)


def _file_load_plan(req: LoadRequest, inputs: Inputs) -> Plan:
    """What a kexec_file_load would do: no segments (the kernel parses and
    places the image itself)."""
    from kexec_py.errors import FormatError

    if inputs.image.kind != "bzImage":
        raise FormatError(
            f"{req.kernel} is not a bzImage ({inputs.image.kind}): on x86_64 kexec_file_load "
            "takes only 64-bit bzImages", "load it with kexec_load: -c")
    flags = file_load_flags(req)
    cmd = "NULL" if req.cmdline is None else repr(req.cmdline)
    notes = [f"kexec_file_load(kernel={req.kernel}, initrd="
             f"{req.initrd if req.initrd is not None else '-1'}, cmdline={cmd}, "
             f"flags={flags:#x}): the kernel parses and places the image"]
    if req.syscall == "auto":
        notes.append("if kexec_file_load fails with ENOSYS, EINVAL, ENOEXEC or ENOTSUP, "
                      "kexec-py falls back to kexec_load; -c shows that plan")
    return Plan("kexec_file_load", 0, [], notes)


def dry_run_plan(backend: Backend, req: LoadRequest, rng_seed: bytes | None = None) -> Plan:
    """The plan of :func:`load` for --dry-run: what would be called, nothing is."""
    with open_inputs(req) as inputs:
        if req.syscall_for(inputs.image.kind) == "file":
            return _file_load_plan(req, inputs)
        return plan_kexec_load(backend, req, rng_seed, inputs)


def load(backend: Backend, req: LoadRequest, inputs: Inputs | None = None) -> LoadResult:
    """Load ``req``: kexec_file_load, kexec_load, or the first then the
    second (the default, like kexec-tools 2.0.27+).  ``inputs``: the
    request's files when the caller has opened them (:func:`open_inputs`)."""
    if inputs is None:
        with open_inputs(req) as opened:
            return load(backend, req, opened)
    fallback_from: str | None = None
    if req.syscall_for(inputs.image.kind) == "file":
        try:
            return _load_file(backend, req, inputs)
        except SyscallError as e:
            if req.syscall != "auto" or e.errno not in FALLBACK_ERRNOS:
                raise
            fallback_from = e.message
            if req.crash:
                raise UnsupportedError(
                    f"{e.message}; kexec-py cannot fall back to kexec_load for a crash "
                    "kernel", e.hint) from None
    plan = plan_kexec_load(backend, req, os.urandom(bootparams.RNG_SEED_SIZE), inputs)
    call = plan.calls[0]
    backend.kexec_load(plan.entry, call.segments, call.flags)
    return LoadResult("kexec_load", call.flags, str(req.kernel),
                      str(req.initrd) if req.initrd else None, req.cmdline,
                      fallback_from, plan)


def plan_staged_kernel(backend: Backend, req: LoadRequest, *, staged: str = "auto",
                       rng_seed: bytes | None = None,
                       max_segments: int = abi.KEXEC_SEGMENT_MAX) -> StagedPlan:
    """``load --staged`` of a kernel without the hibernation window: the
    kexec_load segments of ``req`` (as ``-c`` places them), packed into
    stages only when they need it (``auto``) or always."""
    memmap = backend.memory_map()
    with open_inputs(req) as inputs:
        ks = plan_kernel(backend, req, inputs.image, inputs.initrd_image(), memmap,
                         rng_seed=rng_seed)
    sp = plan_load(ks.segments, ks.entry, flags=kexec_load_flags(req.preserve_context),
                   staged=staged, supported=backend.staged_supported(),
                   max_call_bytes=call_budget(memmap, backend),
                   max_segments=max_segments)
    sp.plan.notes[:0] = ks.notes
    return sp
