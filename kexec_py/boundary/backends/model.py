"""The model backend: an in-process model of a kernel with the kexec
multi-stage load patch (:mod:`kexec_py.model`), behind the same
:class:`~kexec_py.boundary.backends.Backend` interface as the running kernel.

Errors are :class:`SyscallError` with the call's text, errno and hint,
exactly as from the linux backend; the hint also carries the model's own
reason.  ``/sys/kernel/kexec_loaded`` and ``/proc/kexec_pgmap`` come from
the model (``status()``, ``pgmap()``), whatever ``--root`` holds.

State lives in a directory (:mod:`kexec_py.model.store`), so that
``load``, ``pgmap``, ``exec`` and ``status`` can be separate commands.  It
is read when first needed; the first call that changes the model takes the
model's kexec lock (another invocation changing it meanwhile gets EBUSY)
and re-reads it; :meth:`close` writes it back.

From ``--root`` (when it is not ``/``) the model also takes the running
kernel's permissions: ``CapEff`` in ``proc/self/status`` (no CAP_SYS_BOOT:
EPERM) and ``proc/sys/kernel/kexec_load_disabled``.  The memory map comes
from ``--root`` (or ``/``) when the state is created.

Beyond the Backend interface (for the demo, tests and saving images):
:meth:`read_phys`, :meth:`write_phys`, :meth:`ram`, :meth:`jump_back`,
:attr:`last_jump`, :meth:`running`, :meth:`image`, :meth:`reset`,
:meth:`dump_memory`, :meth:`check_invariants`, :meth:`flush`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from kexec_py.arch.x86.bootparams import JUMP_BACK_TEXT
from kexec_py.boundary import abi, procfs, syscall
from kexec_py.boundary.backends import ExecReport, Status, has_cap_sys_boot
from kexec_py.boundary.procfs import PageMap
from kexec_py.boundary.syscall import hint_for
from kexec_py.errors import KexecError, SyscallError, UnsupportedError
from kexec_py.memmap import MemoryMap
from kexec_py.model.config import ModelConfig, config_for_root
from kexec_py.model.kernel import (
    FLAVOURS,
    STAGE_NAME,
    Image,
    JumpRecord,
    KernelErr,
    ModelKernel,
)
from kexec_py.model.physmem import PhysMem
from kexec_py.model.store import RESET_HINT, StateDir, dump_kernel, load_kernel
from kexec_py.ranges import Range
from kexec_py.segments import Segment

DEFAULT_CMDLINE = "console=ttyS0 root=/dev/vda ro"
REBOOT_CALL = "reboot(LINUX_REBOOT_CMD_KEXEC)"
#: the note dump-memory adds: name, type; the descriptor is JSON
MODEL_NOTE = ("KPY-MODEL", 1)


#: a call's text, or what makes it (only an error needs it)
CallText = str | Callable[[], str]
_SLASH = Path("/")


def _text(call: CallText) -> str:
    return call if isinstance(call, str) else call()


def _err(call: CallText, e: KernelErr, hint: str | None = None) -> SyscallError:
    return SyscallError(_text(call), e.errno,
                        f"{hint or hint_for(e.errno)}; the model says: {e.why}")


def _load_text(entry: int, segments: Sequence[Segment], flags: int) -> str:
    segs = ", ".join(f"{{{s.mem:#x}+{s.memsz:#x}, bufsz {s.bufsz:#x}}}" for s in segments)
    return (f"kexec_load(entry={entry:#x}, nr_segments={len(segments)}, segments=[{segs}], "
            f"flags={flags:#x})")


#: what the command line holds until the entry stub fills in the jump-back
#: address (kexec_py.arch.x86.bootparams puts it there)
JUMP_BACK_ZEROS = (JUMP_BACK_TEXT.strip() + b"0" * 16).decode()

class ModelBackend:
    """The model kernel as a backend.

    ``kernel``: "patched" (the seed; /proc/kexec_pgmap), "stock-6.1"
    (stage bits: EINVAL) or "stock-6.6" (0x4 and 0x8 taken as
    KEXEC_UPDATE_ELFCOREHDR and KEXEC_CRASH_HOTPLUG_SUPPORT).
    ``state_path``: the state directory (default: see
    :func:`~kexec_py.model.store.default_state_path`; what is checked
    before it is used: :mod:`kexec_py.model.store`).  ``persist`` False
    keeps everything in this process (no files but an unlinked memory
    file).  ``copy_contents`` False tracks pages and maps but no bytes
    (huge benchmark loads).  ``config`` describes the machine of a new
    state (it must match an existing one).  ``cap_sys_boot`` overrides
    whether this process has CAP_SYS_BOOT.
    """

    name = "model"

    def __init__(self, root: Path, kernel: str = "patched", state_path: Path | None = None,
                 *, persist: bool = True, copy_contents: bool = True,
                 config: ModelConfig | None = None, cap_sys_boot: bool | None = None) -> None:
        if kernel not in FLAVOURS:
            raise KexecError(f"unknown model kernel {kernel!r}",
                             f"choose one of {', '.join(FLAVOURS)}")
        self.root = root
        self.flavour = kernel
        self.persist = persist
        self.copy_contents = copy_contents
        self._config = config
        self._cap = cap_sys_boot
        self._paths: dict[str, str] = {}
        self.store: StateDir | None = None
        if persist:
            self.store = StateDir(state_path) if state_path is not None else \
                StateDir.default(root)
        self._k: ModelKernel | None = None
        self._writable = False
        self._changed = False
        self._broken = False
        self._ops: set[str] = set()

    # --- state ------------------------------------------------------------------------

    @property
    def state_path(self) -> Path | None:
        return self.store.path if self.store is not None else None

    def _new_config(self) -> ModelConfig:
        return self._config if self._config is not None else config_for_root(self.root)

    def _fresh(self, config: ModelConfig, mem: PhysMem | None) -> ModelKernel:
        """A model kernel just booted: nothing loaded, memory all zero, the
        command line of ``--root`` (or a default)."""
        if mem is None:
            mem = PhysMem(None, config.memory_size())
        cmd = procfs.cmdline(self.root)
        return ModelKernel(config, self.flavour, mem, copy_contents=self.copy_contents,
                           cmdline=cmd if cmd is not None else DEFAULT_CMDLINE)

    def _open(self, writable: bool) -> ModelKernel:
        st = self.store
        assert st is not None
        got = st.read()
        if got is None:
            config = self._new_config()
            if not writable:
                return self._fresh(config, None)
            st.ensure()
            st.remove()  # a memory file without a state is stale
            k = self._fresh(config, PhysMem(st.memory_path(create=True), config.memory_size()))
            self._changed = True
            return k
        header, blobs = got
        try:
            config = ModelConfig.from_json(header["config"])
            mem = PhysMem(st.memory_path(create=False), config.memory_size(),
                          writable=writable)
            k = load_kernel(header, blobs, mem, self.copy_contents)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise KexecError(f"model state {st.state_file} is unusable: {type(e).__name__}: "
                             f"{e}", RESET_HINT) from None
        if self._config is not None and self._config.to_json() != config.to_json():
            raise KexecError(f"model state {st.path} describes another machine than the one "
                             "asked for", RESET_HINT)
        if k.flavour != self.flavour:
            busy = len(k.levels) > 1 or any(True for _ in k.images())
            if busy:
                raise KexecError(
                    f"the model in {st.path} runs the {k.flavour} kernel and has an image "
                    f"loaded; it cannot become {self.flavour}",
                    f"use --model-kernel {k.flavour}, or unload first, or {RESET_HINT}")
            k.flavour = self.flavour
            self._changed |= writable
        if writable:
            ops = st.dirty()
            if ops is not None:
                self._recover(k, ops)
        return k

    def _recover(self, k: ModelKernel, ops: set[str]) -> None:
        """An earlier invocation died while it changed the model."""
        if k.level.staging is not None:
            k.drop_staging()
            k.notes.append("an earlier invocation was interrupted during a staged load: the "
                           "staged load was dropped")
        if "exec" in ops:
            for lvl in k.levels:
                lvl.kexec = lvl.staging = lvl.crash = None
            k.levels = k.levels[:1]
            lvl = k.level
            lvl.owner.keep_only(0)
            lvl.nfree = k.pool.n - len(lvl.owner)
            k.notes.append("an earlier invocation was interrupted during exec: every image "
                           "was dropped and memory contents are undefined")
        self._changed = True

    def _kernel(self, write: bool = False, call: CallText | None = None) -> ModelKernel:
        """The model kernel; ``write`` takes the model's kexec lock first
        (EBUSY, as SyscallError naming ``call``, when another invocation
        holds it)."""
        if self.store is None:
            if self._k is None:
                self._k = self._fresh(self._new_config(), None)
            return self._k
        if write and not self._writable:
            if not self.store.try_lock():
                raise SyscallError(_text(call) if call else "kexec lock", errno.EBUSY,
                                   f"{hint_for(errno.EBUSY)}; the model's state "
                                   f"{self.store.path} is locked by another kexec-py")
            self._release_kernel()
            self._k = self._open(writable=True)
            self._writable = True
        elif self._k is None:
            self._k = self._open(writable=False)
        return self._k

    def _release_kernel(self) -> None:
        if self._k is not None:
            self._k.mem.close()
            self._k = None

    def _mark(self, op: str) -> None:
        """About to change the model (memory included)."""
        self._changed = True
        if self.store is not None and op not in self._ops:
            self._ops.add(op)
            self.store.mark_dirty(self._ops)

    def flush(self) -> None:
        """Write the state now (close() does it too)."""
        if self.store is not None and self._writable and self._changed and not self._broken:
            assert self._k is not None
            header, blobs = dump_kernel(self._k)
            self.store.write(header, blobs)
            self.store.clear_dirty()
            self._ops = set()
            self._changed = False

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self.store is not None:
                self.store.unlock()
            self._writable = False
            self._release_kernel()

    # --- permissions ----------------------------------------------------------------

    def _perm(self) -> tuple[bool, bool | None, bool | None, list[str]]:
        """(allowed, CAP_SYS_BOOT, kexec_load_disabled, reasons for EPERM)."""
        reasons: list[str] = []
        cap: bool | None = self._cap
        if cap is None:
            cap = self._kernel().config.cap_sys_boot
            if not cap:
                reasons.append("the model was reset with --no-cap-sys-boot: it acts as if this "
                               "process lacked CAP_SYS_BOOT")
        elif not cap:
            reasons.append("the model was told this process lacks CAP_SYS_BOOT")
        disabled: bool | None = False
        if self.root != _SLASH:
            root_cap = has_cap_sys_boot(self._root_text("proc/self/status"))
            if root_cap is False:
                cap = False
                reasons.append(f"{self.root / 'proc/self/status'}: CapEff lacks CAP_SYS_BOOT")
            text = self._root_text("proc/sys/kernel/kexec_load_disabled")
            disabled = None if text is None else procfs.parse_bool01(text)
            if disabled:
                reasons.append(f"{self.root / 'proc/sys/kernel/kexec_load_disabled'} is 1")
        return (bool(cap) and not disabled), cap, disabled, reasons

    def _root_text(self, rel: str) -> str | None:
        """``procfs.read_text(self.root, rel)``, read again at every call (as
        the kernel checks at every call) without building the path again."""
        path = self._paths.get(rel)
        if path is None:
            path = self._paths[rel] = str(self.root / rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                with open(fd, encoding="utf-8", errors="replace") as f:
                    return f.read()
            except OSError:
                pass
        return procfs.read_text(self.root, rel)  # its error (or the text, this time)

    #: the model never acts on this machine's kernel
    touches_host = False

    def host_refusal(self) -> str | None:
        return None

    def lock_path(self) -> Path:
        """ROOT/run/kexec-py.lock with --root; at root / (a model of the
        user's own, whose state is per user) STATE.lock beside the state
        directory, outside it: its contents are the model's."""
        from kexec_py.boundary.lock import lock_path

        if Path(self.root) != Path("/") or self.store is None:
            return lock_path(self.root)
        self.store.ensure()  # the directories, checked as the model checks them
        state = self.store.path
        return state.with_name(state.name + ".lock")

    def eperm_reasons(self) -> list[str]:
        """Why the model would refuse this process a load with EPERM."""
        return self._perm()[3]

    def _check_perm(self, call: CallText) -> None:
        ok, _, _, reasons = self._perm()
        if not ok:
            raise SyscallError(_text(call), errno.EPERM, "; ".join(reasons))

    # --- the system calls --------------------------------------------------------------

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        if flags & abi.KEXEC_ARCH_MASK == 0:
            flags |= abi.KEXEC_ARCH_X86_64
        syscall.trace_kexec_load(entry, segments, flags)
        try:
            self._kexec_load(entry, segments, flags)
        except SyscallError as e:
            syscall.trace_error(e)
            raise
        syscall.trace_error(None)

    def _kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:

        def call() -> str:
            return _load_text(entry, segments, flags)

        self._check_perm(call)
        k = self._kernel()
        try:
            k.precheck_load(len(segments), flags)
        except KernelErr as e:
            if k.stage_of(flags) != abi.Stage.FULL:
                # an error in any stage drops the staged load (if we can get at it)
                try:
                    kw = self._kernel(write=True, call=call)
                except SyscallError:
                    pass
                else:
                    if kw.level.staging is not None:
                        self._mark("load")
                        kw.drop_staging()
            raise _err(call, e) from None
        kw = self._kernel(write=True, call=call)
        self._mark("load")
        try:
            kw.kexec_load(entry, segments, flags)
        except KernelErr as e:
            raise _err(call, e) from None
        except BaseException:
            self._broken = True
            raise

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                        flags: int) -> None:
        syscall.trace_kexec_file_load(kernel_fd, initrd_fd, cmdline, flags)
        try:
            self._kexec_file_load(kernel_fd, initrd_fd, cmdline, flags)
        except SyscallError as e:
            syscall.trace_error(e)
            raise
        syscall.trace_error(None)

    def _kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                         flags: int) -> None:
        clen = 0 if cmdline is None else len(cmdline) + 1
        shown = "NULL" if cmdline is None else repr(cmdline.decode(errors="replace"))
        call = (f"kexec_file_load(kernel_fd={kernel_fd}, initrd_fd={initrd_fd}, "
                f"cmdline_len={clen}, cmdline={shown}, flags={flags:#x})")
        self._check_perm(call)
        if flags & ~abi.KEXEC_FILE_UNLOAD & ~abi.KEXEC_FILE_ON_CRASH \
                & ~abi.KEXEC_FILE_NO_INITRAMFS:
            raise _err(call, KernelErr(errno.EINVAL, f"flags {flags:#x}: this kernel knows "
                                                     "UNLOAD, ON_CRASH and NO_INITRAMFS"))
        kw = self._kernel(write=True, call=call)
        self._mark("load")
        crash = bool(flags & abi.KEXEC_FILE_ON_CRASH)
        try:
            if flags & abi.KEXEC_FILE_UNLOAD:
                kw.unload(crash)
                return
            if crash:
                kw.unload(True)  # 6.1 frees the old crash image before it loads
            self._file_load(kw, kernel_fd, initrd_fd, cmdline, flags, crash)
        except KernelErr as e:
            raise _err(call, e) from None
        except BaseException:
            self._broken = True
            raise

    def _file_load(self, kw: ModelKernel, kernel_fd: int, initrd_fd: int,
                   cmdline: bytes | None, flags: int, crash: bool) -> None:
        from kexec_py.model import fileload

        kv = fileload.FileView(kernel_fd, "kernel")
        iv: fileload.FileView | None = None
        try:
            fileload.probe(kv.data)
            if not flags & abi.KEXEC_FILE_NO_INITRAMFS:
                iv = fileload.FileView(initrd_fd, "initrd")
            region = kw.config.regions.crash_region()
            if crash and region is None:
                raise KernelErr(errno.EADDRNOTAVAIL, "no crash region is reserved "
                                                     "(crashkernel=)")
            plan = fileload.build(kv, iv, cmdline, kw.config.regions,
                                  region if crash else None)
            kw.file_load(plan.entry, plan.segments, crash, plan.info)
            del plan
        finally:
            kv.close()
            if iv is not None:
                iv.close()

    def reboot_kexec(self) -> None:
        self._reboot(jump_back=False)

    def _reboot(self, jump_back: bool) -> JumpRecord:
        syscall.trace_reboot()
        try:
            rec = self._do_reboot(jump_back)
        except SyscallError as e:
            syscall.trace_error(e)
            raise
        syscall.trace_error(None)
        return rec

    def _do_reboot(self, jump_back: bool) -> JumpRecord:
        self._check_perm(REBOOT_CALL)
        kw = self._kernel(write=True, call=REBOOT_CALL)
        self._mark("exec")
        try:
            return kw.jump_back() if jump_back else kw.reboot()
        except KernelErr as e:
            hint = ("no kernel is loaded: run 'kexec-py load' first"
                    if e.errno == errno.EINVAL else None)
            raise _err(REBOOT_CALL, e, hint) from None
        except BaseException:
            self._broken = True
            raise

    def jump_back(self) -> JumpRecord:
        """Return from a kernel entered by a preserve-context jump to the
        one that jumped (the same as ``reboot_kexec`` there with nothing
        loaded)."""
        return self._reboot(jump_back=True)

    def sync(self) -> None:
        """Nothing to flush: the model's disks are the host's."""

    # --- state for the tool --------------------------------------------------------------

    def status(self) -> Status:
        k = self._kernel()
        lvl = k.level
        _, cap, disabled, reasons = self._perm()
        region = k.config.regions.crash_region()
        st = Status(
            backend=self.name,
            kernel=f"model:{k.flavour}",
            loaded=lvl.kexec is not None,
            crash_loaded=lvl.crash is not None,
            crash_size=region.size if region is not None else 0,
            kexec_load="yes",
            kexec_file_load="yes",
            staged=k.staged_supported,
            lockdown=None,
            load_disabled=disabled,
            load_limits={},
            cap_sys_boot=cap,
            problems=reasons + list(k.notes),
        )
        st.running = self.running_text(k)
        if lvl.staging is not None:
            img = lvl.staging
            st.staging = (f"{STAGE_NAME[img.stage]} done: {img.calls} calls, "
                          f"{len(img.seg_mem)} segments, {len(img.map)} pages; "
                          "not executable until KS_final")
        return st

    @staticmethod
    def running_text(k: ModelKernel) -> str:
        lvl = k.level
        r = lvl.entered
        if r is None:
            return "the original kernel"
        how = "a preserve-context jump" if r.preserve_context else "kexec"
        text = f"{lvl.name}, entered at {r.entry:#x} by {how} from {r.from_kernel}"
        if len(k.levels) > 1:
            text += f" (exec with nothing loaded returns to {k.levels[-2].name})"
        return text

    def memory_map(self) -> MemoryMap:
        return self._kernel().config.regions

    def image_loaded(self, crash: bool) -> bool | None:
        st = self.status()
        return st.crash_loaded if crash else st.loaded

    def can_return(self) -> bool:
        return int(self.running()["depth"]) > 0

    def exec_report(self) -> ExecReport | None:
        """What the last exec did in the model (a real exec does not come
        back to say)."""
        jump = self.last_jump
        if jump is None:
            return None
        now = self.running()
        if jump.what == "return":
            lines = [f"model: returned to {jump.to_kernel}: {jump.pages} pages swapped back"]
        elif jump.what == "jump":
            lines = [f"model: jumped to {jump.entry:#x} with preserve context ({jump.pages} "
                     f"pages swapped); now running {now['name']}; 'kexec-py exec' with nothing "
                     "loaded there returns"]
        else:
            lines = [f"model: executed the image: {jump.pages} pages copied, jumped to "
                     f"{jump.entry:#x}; now running {now['name']}"]
        if jump.cmdline is not None and jump.what != "return":
            lines.append(f"model: its command line: {jump.cmdline}")
        return ExecReport(lines,
                          {"executed": True, "returned": jump.what == "return",
                           "model": jump.to_json(), "running": now["text"]})

    def physical_memory(self) -> Callable[[int, int], bytes] | None:
        return self.read_phys

    def total_ram(self) -> int | None:
        """None: the model's RAM is its memory map."""
        return None

    def cmdline(self) -> str:
        """The running kernel's /proc/cmdline.  Our entry stub writes the
        jump-back address into the 16 zero digits of
        ``kexec_jump_back_entry=0x...`` at a preserve-context jump; the model
        does not run the stub, so this does it from its record of the jump."""
        lvl = self._kernel().level
        cmd = lvl.cmdline
        back = lvl.entered.jump_back_entry if lvl.entered is not None else None
        if back and JUMP_BACK_ZEROS in cmd:
            cmd = cmd.replace(JUMP_BACK_ZEROS, f"kexec_jump_back_entry=0x{back:016x}")
        return cmd

    def staged_supported(self) -> bool:
        return self.flavour == "patched"

    def pgmap(self) -> PageMap:
        """/proc/kexec_pgmap of the staged load in progress, else of the
        installed image.  The model's order is insertion order (the
        seed's is hash order, kernel/'s series sorts by destination): userspace
        must not depend on it."""
        if self.flavour != "patched":
            raise UnsupportedError(
                "this kernel has no /proc/kexec_pgmap: it does not speak the multi-stage "
                "load protocol",
                "boot a kernel with the kexec multi-stage load patch (see kernel/ in the "
                "kexec-py sources), or use --backend model",
            )
        img = self._kernel().pgmap_image()
        if img is None:
            raise KexecError("/proc/kexec_pgmap: no kexec image is loaded (ENODEV)",
                             "load an image first")
        dst, src = img.pgmap_arrays()
        return PageMap(dst[:], src[:])  # the image's own arrays stay its own

    # --- the model's own interface ---------------------------------------------------------

    @property
    def kernel(self) -> ModelKernel:
        """The model kernel itself (tests: invariants, allocation scripts)."""
        return self._kernel()

    def ram(self) -> list[Range]:
        """Physical memory that holds bytes: System RAM and the crash region."""
        return self._kernel().config.regions.loadable_ram()

    def read_phys(self, addr: int, size: int) -> bytes:
        return self._kernel().mem.read(addr, size)

    def write_phys(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """The running kernel writes ``data`` at physical ``addr``: the pages
        become its own memory (the allocator never hands them out).

        Refuses memory outside RAM, and pages a loaded image holds or that
        belong to a kernel frozen by a kexec jump."""
        n = len(data)
        if not any(r.start <= addr and addr + n <= r.end for r in self.ram()):
            raise KexecError(f"[{addr:#x}, {addr + n:#x}) is not inside one RAM range of the "
                             "model", "see 'kexec-py --backend model status' for the RAM map")
        kw = self._kernel(write=True, call=f"write_phys({addr:#x}, {n})")
        self._mark("write")
        try:
            kw.claim(addr, n)
        except KernelErr as e:
            raise KexecError(f"cannot write [{addr:#x}, {addr + n:#x}): {e.why}",
                             "write the running kernel's own or free memory") from None
        kw.mem.write(addr, data)

    @property
    def last_jump(self) -> JumpRecord | None:
        """The last exec, jump or return of the model, or None."""
        return self._kernel().last_jump

    def running(self) -> dict[str, Any]:
        """Which kernel runs: ``name``, ``depth`` (0: no jump to return
        from), ``text``, ``cmdline`` and ``entered`` (how, as JSON)."""
        k = self._kernel()
        lvl = k.level
        return {"name": lvl.name, "depth": len(k.levels) - 1, "text": self.running_text(k),
                "cmdline": lvl.cmdline,
                "entered": lvl.entered.to_json() if lvl.entered is not None else None}

    def image(self, which: str = "kexec") -> Image | None:
        """The running kernel's ``kexec`` (installed), ``staging`` (staged
        load in progress) or ``crash`` image."""
        lvl = self._kernel().level
        return {"kexec": lvl.kexec, "staging": lvl.staging, "crash": lvl.crash}[which]

    def check_invariants(self) -> list[str]:
        return self._kernel().check_invariants()

    def reset(self, config: ModelConfig | None = None) -> Path | None:
        """Discard the model (images, memory, kernels) and start a fresh
        one with ``config`` (default: from ``--root``).  Returns the state
        directory (None for a model kept in memory only)."""
        if config is not None:
            self._config = config
        self._release_kernel()
        if self.store is None:
            self._k = self._fresh(self._new_config(), None)
            return None
        if not self._writable:
            if not self.store.try_lock(repair=True):
                raise SyscallError("model-reset", errno.EBUSY,
                                   f"the model's state {self.store.path} is locked by another "
                                   "kexec-py; retry when it has finished")
            self._writable = True
        self.store.remove()
        self._k = self._open(writable=True)
        self._changed = True
        return self.state_path

    def dump_memory(self, dest: str | Path | BinaryIO) -> dict[str, Any]:
        """Write physical memory as an ELF core file, one PT_LOAD per RAM
        run (zero pages become holes), with a note "KPY-MODEL" (type 1)
        whose descriptor is JSON: model kernel, running kernel, last jump.

        A path is written as :func:`kexec_py.safefile.private_output` writes
        (mode 0600, ``FILE.part`` then a rename, never through a symlink);
        a binary file is written from its current position."""
        from kexec_py.formats.corewriter import CoreLoad, write_core

        k = self._kernel()
        mem = k.mem

        def reader(r: Range) -> Callable[[], Iterator[tuple[int, bytes]]]:
            def chunks() -> Iterator[tuple[int, bytes]]:
                for addr, data in mem.nonzero_runs(r.start, r.end):
                    yield addr - r.start, data
            return chunks

        loads = [CoreLoad(r.start, r.size, reader(r)) for r in k.config.regions.loadable_ram()]
        desc = {"kernel": k.flavour, "running": self.running(),
                "last_jump": k.last_jump.to_json() if k.last_jump is not None else None}
        stats = write_core(dest, loads, [(MODEL_NOTE[0], MODEL_NOTE[1],
                                          json.dumps(desc).encode())])
        return {"file": str(dest) if isinstance(dest, (str, Path)) else None,
                "loads": stats.loads, "file_size": stats.file_size,
                "data_bytes": stats.data_bytes,
                "ram": [[r.start, r.end] for r in k.config.regions.loadable_ram()]}
