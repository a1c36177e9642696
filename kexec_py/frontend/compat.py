"""kexec-tools' command line on kexec-py: the drop-in ``kexec``.

Used when the program is invoked as ``kexec`` (a symlink named ``kexec``
to the ``kexec-py`` script) or as ``kexec-py compat -- ARGS``.  The
arguments are parsed like kexec-tools parses them (GNU ``getopt_long``:
clustered short options, ``-tTYPE`` / ``-t TYPE``, ``--opt=value`` /
``--opt value``, unambiguous prefixes of long options, options after the
kernel, ``--`` ends the options), then the same state machine as
kexec-tools' ``main()`` decides what to do: load (``-l``, ``-p``,
``--load-preserve-context``), exec (``-e``), unload (``-u``), status
(``-S``), load then ``shutdown -r now`` (neither ``-l`` nor ``-e``), or load
then exec (``-f``).  The work is done by kexec-py's loader and backends,
never by re-running the click CLI.

Exit statuses and the first line of every error follow kexec-tools
(2.0.25-2.0.28, x86_64): 0 success; 1 usage errors and what kexec-tools
``die()``\\s on ("Nothing has been loaded!", "Cannot open `FILE': ...",
"Memory for crashkernel is not reserved"); 255 a failed load, unload or
exec ("kexec_load failed: Operation not permitted", "Cannot determine the
file type of FILE"); ``-S`` exits 1 when the image is loaded and 0 when it
is not.  kexec-py adds its own detail after the first line (the call with
its arguments, ``hint: ...``).

kexec-tools options that kexec-py does not implement are refused by name
with a hint (exit 1); none is silently ignored.

Nothing reaches outside the backend unless the run talks to the running
kernel at root / (:meth:`Env.touches_host`, the one predicate): only then
does ``shutdown -r now`` run and do the network interfaces go down.  On the
model (or any backend other than the running kernel) the reboot that
``shutdown -r now`` would bring is an exec in that backend; with the linux
backend under another root, whose system calls would still reach this
machine's kernel, every step that would change it is refused.  The steps
that change what is loaded run under the load lock (kexec_py/boundary/lock.py) and
with SIGINT/SIGTERM held (kexec_py/frontend/main.py) once the first change starts.

Like ``cli.py``, this module is a front end: it writes to the streams it is
given and returns the exit status; ``main.py`` or ``cli.py`` exits.  It
imports the loader and the backends only when it needs them, so ``kexec
--version`` stays fast.
"""

from __future__ import annotations

import errno as _errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from kexec_py.errors import KexecError
from kexec_py.frontend.main import hold, release, signalled_by

if TYPE_CHECKING:
    from pathlib import Path

    from kexec_py.boundary.backends import Backend
    from kexec_py.boundary.lock import LoadLock
    from kexec_py.load.image import MappedFile
    from kexec_py.load.request import LoadRequest

#: kexec-tools' return values as exit statuses (main() returns them)
EXIT_OK = 0
EXIT_USAGE = 1  # getopt errors, bad values, die()
EXIT_FAILED = 255  # EFAILED (-1): a failed load, unload or exec
EXIT_FALLBACK = 253  # EFALLBACK (-3): kexec_file_load unavailable (with -s)


# --- the option table -------------------------------------------------------------


class Opt:
    """One kexec-tools option: its long names, short letter, whether it
    takes a value, and ``key`` (what the state machine sees).
    ``loader``: an option of the image loaders (refused by kexec-tools
    unless something is loaded).  ``missing``: not implemented by kexec-py;
    the text is the hint.  (Plain classes here, not dataclasses: ``kexec
    --version`` must not pay for importing them.)"""

    __slots__ = ("longs", "short", "arg", "key", "loader", "missing")

    def __init__(self, longs: tuple[str, ...], short: str | None, arg: bool, key: str,
                 loader: bool = False, missing: str | None = None) -> None:
        self.longs, self.short, self.arg, self.key = longs, short, arg, key
        self.loader, self.missing = loader, missing


_NOT_X86_64 = "kexec-py loads bzImage64 and elf-x86_64 images only"
_XEN = "live update exists only under Xen, which kexec-py does not drive"
_SILENT = "kexec-py's entry stub prints nothing"
_CORE_HEADERS = ("kexec-py loads crash kernels with kexec_file_load, where the kernel builds the "
                 "ELF core headers")
_MODE64 = "kexec-py enters the new kernel in 64-bit mode only"
OPTIONS: tuple[Opt, ...] = (
    # kexec/kexec.h KEXEC_OPTIONS and KEXEC_OPT_STR "h?vdfixyluet:pscaS"
    Opt(("help",), "h", False, "help"),
    Opt((), "?", False, "help"),
    Opt(("version",), "v", False, "version"),
    Opt(("debug",), "d", False, "debug"),
    Opt(("force",), "f", False, "force"),
    Opt(("no-checks",), "i", False, "no-checks"),
    Opt(("no-ifdown",), "x", False, "no-ifdown"),
    Opt(("no-sync",), "y", False, "no-sync"),
    Opt(("load",), "l", False, "load"),
    Opt(("unload",), "u", False, "unload"),
    Opt(("exec",), "e", False, "exec"),
    Opt(("type",), "t", True, "type"),
    Opt(("load-panic",), "p", False, "panic"),
    Opt(("kexec-file-syscall",), "s", False, "file"),
    Opt(("kexec-syscall",), "c", False, "syscall"),
    Opt(("kexec-syscall-auto",), "a", False, "auto"),
    Opt(("status",), "S", False, "status"),
    Opt(("load-preserve-context",), None, False, "preserve-context"),
    Opt(("entry",), None, True, "entry"),
    Opt(("mem-min",), None, True, "mem-min"),
    Opt(("mem-max",), None, True, "mem-max"),
    Opt(("print-ckr-size",), None, False, "print-ckr-size"),
    # KEXEC_ALL_OPTIONS: the loaders' options
    Opt(("command-line", "append"), None, True, "append", loader=True),
    Opt(("reuse-cmdline",), None, False, "reuse-cmdline", loader=True),
    Opt(("initrd", "ramdisk"), None, True, "initrd", loader=True),
    Opt(("args-linux",), None, False, "args-linux", loader=True),
    Opt(("args-none",), None, False, "args-none", loader=True),
    # options kexec-tools has and kexec-py does not implement: (name, takes an
    # argument, an image loader's option, why not)
    *(Opt((name,), None, arg, name, loader, why) for name, arg, loader, why in (
        ("reuseinitrd", False, False,
         "kexec-py cannot hand the first boot's initrd on: give it with --initrd"),
        ("load-jump-back-helper", False, False,
         "kexec-py has no jump-back helper image; 'kexec-py resume' returns to a hibernated "
         "kernel"),
        ("load-live-update", False, False, _XEN),
        ("exec-live-update", False, False, _XEN),
        ("hotplug", False, False,
         "kexec-py does not load crash kernels with KEXEC_UPDATE_ELFCOREHDR; reload the crash "
         "kernel after hotplug"),
        # kexec/arch/i386/include/arch/options.h: KEXEC_ARCH_OPTIONS (x86 and x86_64)
        ("reset-vga", False, False, "kexec-py's entry stub does not reset the VGA card"),
        ("serial", True, False,
         f"{_SILENT} on a serial port; use console=ttyS0 in --append"),
        ("serial-baud", True, False, f"{_SILENT} on a serial port"),
        ("console-vga", False, False, f"{_SILENT} on the console"),
        ("console-serial", False, False, f"{_SILENT} on the console"),
        ("elf32-core-headers", False, False, _CORE_HEADERS),
        ("elf64-core-headers", False, False, _CORE_HEADERS),
        ("pass-memmap-cmdline", False, False, "give memmap= parameters in --append yourself"),
        ("noefi", False, False,
         "kexec-py passes no EFI information to the new kernel; add noefi or acpi_rsdp= to "
         "--append if it needs them"),
        ("reuse-video-type", False, False,
         "kexec-py passes the running kernel's screen_info as it is"),
        # KEXEC_ALL_OPTIONS: the image loaders' options
        ("args-elf", False, True,
         "kexec-py does not build ELF boot notes; ELF kernels get Linux boot parameters "
         "(--args-linux) or none (--args-none)"),
        ("module", True, True, _NOT_X86_64 + " (no multiboot)"),
        ("real-mode", False, True, _MODE64),
        ("entry-32bit", False, True, _MODE64),
        ("dtb", True, True, "kexec-py passes no device tree on x86_64"),
    )),
)
LONG: dict[str, Opt] = {name: o for o in OPTIONS for name in o.longs}
SHORT: dict[str, Opt] = {o.short: o for o in OPTIONS if o.short}

#: kexec-tools' image type names (-t) -> what kexec-py's loader calls them;
#: None: a kexec-tools type kexec-py does not load
TYPES: dict[str, str | None] = {
    "bzImage64": "bzImage64", "elf-x86_64": "elf-x86_64",
    "multiboot-x86": None, "multiboot2-x86": None, "elf-x86": None, "bzImage": None,
    "beoboot-x86": None, "nbi-x86": None,
}


class Usage(Exception):
    """A command line kexec-tools would refuse (exit 1).  ``usage``: print
    the usage text on stdout as kexec-tools does."""

    def __init__(self, message: str, hint: str = "", usage: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.usage = usage


class Parsed:
    """The options in command-line order (key, value), and the operands."""

    def __init__(self) -> None:
        self.options: list[tuple[Opt, str | None]] = []
        #: each option as it was written (long options without "=value")
        self.spelled: list[str] = []
        self.operands: list[str] = []


def parse(argv: Sequence[str], prog: str = "kexec") -> Parsed:
    """Parse ``argv`` (without the program name) as GNU ``getopt_long``
    does for kexec-tools: options and operands may mix (operands are
    collected in order), ``--`` ends the options.  Raises :class:`Usage`
    with getopt's message for unknown options, missing or unexpected
    values, and ambiguous prefixes."""
    out = Parsed()
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            out.operands.extend(args[i:])
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            opt = _long(name, prog)
            if opt.arg:
                if not eq:
                    if i >= len(args):
                        raise Usage(f"{prog}: option '--{_full(opt, name)}' requires an "
                                    "argument")
                    value = args[i]
                    i += 1
                out.options.append((opt, value))
            else:
                if eq:
                    raise Usage(f"{prog}: option '--{_full(opt, name)}' doesn't allow an "
                                "argument")
                out.options.append((opt, None))
            out.spelled.append("--" + _full(opt, name))
        elif a.startswith("-") and a != "-":
            j = 1
            while j < len(a):
                ch = a[j]
                j += 1
                sopt = SHORT.get(ch)
                if sopt is None:
                    raise Usage(f"{prog}: invalid option -- '{ch}'")
                if sopt.arg:
                    if j < len(a):
                        value = a[j:]
                    elif i < len(args):
                        value = args[i]
                        i += 1
                    else:
                        raise Usage(f"{prog}: option requires an argument -- '{ch}'")
                    out.options.append((sopt, value))
                    out.spelled.append("-" + ch)
                    break
                out.options.append((sopt, None))
                out.spelled.append("-" + ch)
        else:
            out.operands.append(a)
    return out


def _long(name: str, prog: str) -> Opt:
    if name in LONG:
        return LONG[name]
    hits = sorted(n for n in LONG if n.startswith(name)) if name else []
    opts = {id(LONG[n]) for n in hits}
    if len(opts) == 1:
        return LONG[hits[0]]
    if hits:
        raise Usage(f"{prog}: option '--{name}' is ambiguous; possibilities: "
                    + " ".join(f"'--{n}'" for n in hits))
    raise Usage(f"{prog}: unrecognized option '--{name}'")


def _full(opt: Opt, typed: str) -> str:
    return typed if typed in opt.longs else next(n for n in opt.longs if n.startswith(typed))


def _number(text: str, what: str) -> int:
    """``strtoul(text, &end, 0)`` with ``*end`` required to be NUL: decimal,
    0x hex or 0 octal; kexec-tools' message otherwise."""
    t = text.strip()
    try:
        if t.lower().startswith("0x"):
            n = int(t[2:], 16)
        elif len(t) > 1 and t.startswith("0"):
            n = int(t[1:], 8)
        else:
            n = int(t, 10)
    except ValueError:
        raise Usage(f"Bad option value in --{what}={text}") from None
    if n < 0 or n >= 1 << 64:
        raise Usage(f"Bad option value in --{what}={text}")
    return n


# --- what to do: kexec-tools' main() as a state machine ------------------------------


class Plan:
    """What kexec-tools' ``main()`` would do for a command line: its
    ``do_*`` flags with their initial values (load, then shutdown)."""

    # the initial values (class attributes; the option loop sets them on the instance)
    do_load, do_exec, do_shutdown, do_sync, do_ifdown = True, False, True, True, False
    do_unload = do_status = has_opt_load = crash = preserve_context = debug = False
    #: "auto" (kexec-tools 2.0.27+'s default, -a), "file" (-s), "load" (-c)
    syscall = "auto"
    entry: int | None = None
    mem_min = 0
    mem_max: int | None = None
    image_type: str | None = None
    append: str | None = None
    reuse_cmdline = args_none = False
    initrd: str | None = None
    kernel: str | None = None
    #: -h, -v, --print-ckr-size: answered at once, in the option loop
    immediate: str | None = None

    def __init__(self) -> None:
        #: options that only make sense for a load, in the order given
        self.loader_options: list[str] = []


#: what each option sets in the Plan, as kexec-tools' option loop
#: (kexec/kexec.c main()) sets its flags
_SETS: dict[str, tuple[tuple[str, object], ...]] = {
    "debug": (("debug", True),),
    "force": (("do_load", True), ("do_shutdown", False), ("do_sync", True),
              ("do_ifdown", True), ("do_exec", True)),
    "load": (("has_opt_load", True), ("do_load", True), ("do_exec", False),
             ("do_shutdown", False)),
    "unload": (("do_load", False), ("do_shutdown", False), ("do_sync", False),
               ("do_unload", True)),
    "exec": (("do_load", False), ("do_shutdown", False), ("do_sync", True),
             ("do_ifdown", True), ("do_exec", True)),
    # kexec_flags = KEXEC_PRESERVE_CONTEXT
    "preserve-context": (("do_load", True), ("do_exec", False), ("do_shutdown", False),
                         ("do_sync", True), ("preserve_context", True), ("crash", False)),
    # kexec_flags = KEXEC_ON_CRASH
    "panic": (("do_load", True), ("do_exec", False), ("do_shutdown", False),
              ("do_sync", False), ("crash", True), ("preserve_context", False)),
    "file": (("syscall", "file"),),
    "syscall": (("syscall", "load"),),
    "auto": (("syscall", "auto"),),
    "status": (("do_status", True),),
    "reuse-cmdline": (("reuse_cmdline", True),),
    "args-linux": (("args_none", False),),
    "args-none": (("args_none", True),),
}
#: options whose argument is kept as given, and options whose argument is a number
_VALUES = {"type": "image_type", "append": "append", "initrd": "initrd"}
_NUMBERS = {"entry": "entry", "mem-min": "mem_min", "mem-max": "mem_max"}


def decide(parsed: Parsed) -> Plan:
    """kexec-tools' option loop: each option sets the same flags as there,
    in order, so later options win as they do in kexec-tools.  Refuses
    unimplemented options by name."""
    p = Plan()
    skip_sync = skip_ifdown = False
    for (opt, value), spelled in zip(parsed.options, parsed.spelled, strict=True):
        if opt.missing is not None:
            raise Usage(f"kexec: option '--{opt.longs[0]}' is not implemented by kexec-py",
                        opt.missing, usage=False)
        k = opt.key
        if k in ("help", "version", "print-ckr-size"):
            p.immediate = k
            return p
        if opt.loader:
            p.loader_options.append(spelled)
        if k in _SETS:
            for attr, v in _SETS[k]:
                setattr(p, attr, v)
        elif k in _VALUES:
            setattr(p, _VALUES[k], value)
        elif k in _NUMBERS:
            setattr(p, _NUMBERS[k], _number(value or "", k))
        elif k == "no-ifdown":
            skip_ifdown = True
        elif k == "no-sync":
            skip_sync = True
        elif k == "no-checks":
            pass  # kexec-py's entry stub verifies no checksum: always "no checks"
        else:  # pragma: no cover - the table and this loop are kept in step
            raise AssertionError(k)
    if skip_ifdown:
        p.do_ifdown = False
    if skip_sync:
        p.do_sync = False
    if p.do_status:
        if not p.crash and not p.preserve_context and not p.has_opt_load:
            p.crash = True  # -S asks about the crash kernel unless -l says otherwise
        p.do_load = p.do_unload = p.do_shutdown = p.do_sync = p.do_ifdown = False
        p.do_exec = False
    if not p.do_load and p.loader_options:
        raise Usage(f"kexec: {', '.join(p.loader_options)}: only for loading a kernel",
                    "kexec-tools refuses the image loaders' options with -e, -u and -S too")
    if p.do_load:
        if len(parsed.operands) > 1:
            raise Usage(f"kexec: unexpected argument '{parsed.operands[1]}' after the kernel",
                        "give one kernel; quote --append values that contain spaces")
        p.kernel = parsed.operands[0] if parsed.operands else None
    elif parsed.operands:
        raise Usage(f"kexec: unexpected argument '{parsed.operands[0]}'",
                    "a kernel is only given when loading")
    return p


# --- running ------------------------------------------------------------------------


USAGE = """\
Usage: kexec [OPTION]... [kernel]
Directly reboot into a new kernel (kexec-py in kexec-tools compatibility mode)

 -h, --help           Print this help.
 -v, --version        Print the version of kexec-py.
 -f, --force          Load, then exec at once; don't call shutdown.
 -i, --no-checks      Accepted: kexec-py's entry stub checks no digest anyway.
 -x, --no-ifdown      Don't bring down network interfaces.
 -y, --no-sync        Don't sync filesystems before kexec.
 -l, --load           Load the new kernel into the current kernel.
 -p, --load-panic     Load the new kernel for use on panic.
 -u, --unload         Unload the current kexec target kernel (-p -u: the crash kernel).
 -e, --exec           Execute a currently loaded kernel.
 -t, --type=TYPE      Insist on this image type: bzImage64 or elf-x86_64.
     --mem-min=<addr> Lowest memory address to load code into (kexec_load).
     --mem-max=<addr> Highest memory address to load code into (kexec_load).
     --print-ckr-size Print crash kernel region size.
     --load-preserve-context Load with KEXEC_PRESERVE_CONTEXT (needs --mem-max).
     --entry=<addr>   Entry point to jump to instead of kexec-py's entry stub.
 -s, --kexec-file-syscall Use kexec_file_load only.
 -c, --kexec-syscall  Use kexec_load only.
 -a, --kexec-syscall-auto  kexec_file_load, falling back to kexec_load (default).
 -d, --debug          Show every system call with its arguments on stderr.
 -S, --status         Exit 1 if the type (by default crash; -l: normal) is loaded, 0 if not.

Options of the bzImage64 and elf-x86_64 loaders:
    --command-line=STRING, --append=STRING  Set the kernel command line to STRING.
    --reuse-cmdline       Use the kernel command line of the running system.
    --initrd=FILE, --ramdisk=FILE  Use FILE as the kernel's initial ramdisk.
    --args-linux          ELF kernels: pass Linux boot parameters (kexec-py's default).
    --args-none           ELF kernels: jump to the ELF entry point with no parameters.

Not implemented by kexec-py (refused by name): --reuseinitrd, --load-jump-back-helper,
--load-live-update, --exec-live-update, --hotplug, --reset-vga, --serial, --serial-baud,
--console-vga, --console-serial, --elf32-core-headers, --elf64-core-headers,
--pass-memmap-cmdline, --noefi, --reuse-video-type, --args-elf, --module, --real-mode,
--entry-32bit, --dtb.  See kexec-py(8), COMPATIBILITY MODE.
"""


class Failed(Exception):
    """A step failed: ``first`` is kexec-tools' first line, ``exit_code``
    its status; ``detail`` and ``hint`` are kexec-py's own lines."""

    def __init__(self, first: str, exit_code: int = EXIT_FAILED, detail: str = "",
                 hint: str = "") -> None:
        super().__init__(first)
        self.first = first
        self.exit_code = exit_code
        self.detail = detail
        self.hint = hint


class Env:
    """What a run talks to; tests replace the parts with side effects.

    ``backend()`` opens the backend on first use; ``root`` is where /proc
    and /sys are read; ``execv`` runs ``shutdown -r now`` after a load
    without -l; ``ifdown`` brings the network interfaces down before an
    exec (kexec-tools' ifdown()); ``lock()`` takes the load lock for the
    rest of the run (default: kexec_py.boundary.lock.lock_for the backend, released
    by :meth:`close`); ``close`` closes the backend (the kexec symlink's
    own; under ``kexec-py compat`` the CLI closes it)."""

    def __init__(self, backend: Callable[[], Backend], root: Path | None = None,
                 out: TextIO | None = None, err: TextIO | None = None,
                 execv: Callable[[str, list[str]], Any] | None = None,
                 ifdown: Callable[[Callable[[str], None]], None] | None = None,
                 lock: Callable[[], Any] | None = None,
                 close: Callable[[], None] | None = None) -> None:
        from pathlib import Path

        self.backend = backend
        self.root = Path("/") if root is None else root
        self.out = sys.stdout if out is None else out
        self.err = sys.stderr if err is None else err
        self.execv: Callable[[str, list[str]], Any] = os.execv if execv is None else execv
        self.ifdown: Callable[[Callable[[str], None]], None] = (
            _ifdown if ifdown is None else ifdown)
        self._lock = lock
        self._close = close
        self._held: LoadLock | None = None

    def touches_host(self) -> bool:
        """Whether this run talks to the running kernel at root /: the only
        case in which it may reach outside the backend (run this machine's
        shutdown, bring its network interfaces down) or, through the
        linux backend, change this machine's kernel."""
        return self.backend().touches_host

    def lock(self) -> None:
        """Take the load lock (LockError when another kexec-py has it)."""
        if self._lock is not None:
            self._lock()
        elif self._held is None:
            from kexec_py.boundary.lock import take_lock

            self._held = take_lock(self.backend())

    def close(self) -> None:
        """Close the backend (the model saves its state), then drop the lock."""
        try:
            if self._close is not None:
                self._close()
        finally:
            if self._held is not None:
                self._held.release()
                self._held = None


def run(argv: Sequence[str], env: Env, prog: str = "kexec") -> int:
    """Carry out a kexec-tools command line; returns the exit status."""
    try:
        plan = decide(parse(argv, prog))
    except Usage as e:
        hold()
        env.err.write(e.message + "\n")
        if e.hint:
            env.err.write(f"hint: {e.hint}\n")
        if e.usage:
            env.out.write(USAGE)
        return EXIT_USAGE
    if plan.immediate == "help":
        hold()
        env.out.write(USAGE)
        return EXIT_OK
    if plan.immediate == "version":
        from kexec_py import __version__

        hold()
        env.out.write(f"kexec-py {__version__}\n")
        return EXIT_OK
    trace = _tracer(env) if plan.debug else None
    from kexec_py.boundary import syscall

    old = syscall.trace
    if trace is not None:
        syscall.trace = trace
    try:
        return _carry_out(plan, env, trace)
    except Failed as e:
        hold()
        env.err.write(e.first + "\n")
        if e.detail and e.detail != e.first:
            env.err.write(f"kexec-py: {e.detail}\n")
        if e.hint:
            env.err.write(f"hint: {e.hint}\n")
        return e.exit_code
    except KexecError as e:  # anything not mapped to a kexec-tools message below
        hold()
        env.err.write(f"kexec: {e.message}\n")
        if e.hint:
            env.err.write(f"hint: {e.hint}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        hold()
        env.err.write("kexec: interrupted (SIGINT)\n")
        return 130
    except Exception as e:  # a bug: one line, no traceback (kexec -d shows it)
        sig = signalled_by(e)
        if sig is not None:  # a signal inside an import: main() reports it
            raise sig from None
        hold()
        if plan.debug:
            import traceback

            traceback.print_exc(file=env.err)
        env.err.write(f"kexec: internal error: {type(e).__name__}: {e}\n"
                      "hint: this is a bug in kexec-py; run again with -d and report it\n")
        return EXIT_FAILED
    finally:
        syscall.trace = old


def _tracer(env: Env) -> Callable[[str], None]:
    def trace(line: str) -> None:
        env.err.write(line + "\n")
        env.err.flush()

    return trace


def _carry_out(p: Plan, env: Env, trace: Callable[[str], None] | None) -> int:
    if p.immediate == "print-ckr-size":
        from kexec_py.boundary import procfs

        r = procfs.crash_region(env.root)
        hold()
        env.out.write(f"{r.end - r.start if r is not None else 0}\n")
        return EXIT_OK
    if p.do_load and p.crash and not _crash_reserved(env.root):
        raise Failed("Memory for crashkernel is not reserved", EXIT_USAGE,
                     hint="boot this kernel with crashkernel=SIZE (e.g. crashkernel=256M)")
    if p.do_load and p.preserve_context and p.mem_max is None:
        raise Failed("Please specify memory range used by kexeced kernel", EXIT_USAGE,
                     hint="give --mem-max (and --mem-min) to confine the new kernel; "
                          "kexec-tools insists on it too")
    if p.syscall == "file" and p.preserve_context:
        raise Failed("--load-preserve-context not supported with kexec_file_load",
                     EXIT_USAGE, hint="drop -s: --load-preserve-context uses kexec_load")
    if p.do_status:
        return _status(p, env)
    if not (p.do_unload or p.do_load or p.do_shutdown or p.do_exec):
        return EXIT_OK
    env.lock()  # everything below changes what is loaded
    if p.do_unload or p.do_load:
        _fence(env)
        hold()  # from the first change on, the run finishes
    if p.do_unload:
        _unload(p, env)
    if p.do_load:
        _load(p, env)
    if (p.do_shutdown or p.do_exec) and _loaded(env, crash=False) is False:
        raise Failed("Nothing has been loaded!", EXIT_USAGE,
                     hint="load a kernel first: kexec -l KERNEL [--initrd=FILE] "
                          "[--append=TEXT]")
    _fence(env)
    host = env.touches_host()
    if p.do_shutdown:
        hold()
        return _shutdown(env) if host else _reboot_in_backend(env)
    if p.do_sync:
        env.backend().sync()
    hold()
    if p.do_ifdown and host:  # the running kernel's own exec only
        env.ifdown(trace or (lambda _line: None))
    if p.do_exec:
        try:
            env.backend().reboot_kexec()
        except KexecError as e:
            raise _failed_call("kexec failed", e) from None
    return EXIT_OK


def _fence(env: Env) -> None:
    """The linux backend under another root reads that root's /proc and
    /sys, but its system calls (and shutdown) would change this machine's
    kernel: refuse, before any change."""
    why = env.backend().host_refusal()
    if why is None:
        return
    raise Failed(f"kexec: {why}", EXIT_USAGE,
                 hint="the linux backend would load into, unload from or reboot this "
                      "machine, not the one under that root; drop --root (KEXEC_PY_ROOT), or "
                      "try it on the model: --backend model (KEXEC_PY_BACKEND=model)")


def _crash_reserved(root: Path) -> bool:
    from kexec_py.boundary import procfs

    if procfs.crash_region(root) is not None:
        return True
    size = procfs.kexec_crash_size(root)
    return bool(size)


def _loaded(env: Env, crash: bool) -> bool | None:
    """kexec_loaded(): /sys/kernel/kexec[_crash]_loaded, or the backend's
    own state for backends other than the running kernel."""
    return env.backend().image_loaded(crash)


def _status(p: Plan, env: Env) -> int:
    loaded = _loaded(env, crash=p.crash)
    if loaded is None:
        return EXIT_FAILED  # kexec_loaded() returned -1: no such file
    return 1 if loaded else 0


def _failed_call(what: str, e: KexecError) -> Failed:
    from kexec_py.errors import SyscallError

    if isinstance(e, SyscallError):
        return Failed(f"{what}: {os.strerror(e.errno)}", EXIT_FAILED, e.message, e.hint)
    return Failed(f"{what}: {e.message}", EXIT_FAILED, "", e.hint)


def _unload(p: Plan, env: Env) -> None:
    from kexec_py.boundary import abi
    from kexec_py.load.execute import unload

    be = env.backend()
    try:
        if p.syscall == "file":
            flags = abi.KEXEC_FILE_UNLOAD | (abi.KEXEC_FILE_ON_CRASH if p.crash else 0)
            try:
                be.kexec_file_load(-1, -1, None, flags)
            except KexecError as e:
                raise _failed_call("kexec_file_load(unload) failed", e) from None
        elif p.syscall == "load":
            be.kexec_load(0, [], abi.KEXEC_ON_CRASH if p.crash else 0)
        else:
            unload(be, p.crash)
    except Failed:
        raise
    except KexecError as e:
        raise _failed_call("kexec unload failed", e) from None


def _cmdline(p: Plan, env: Env) -> str | None:
    """kexec-tools' command line: --reuse-cmdline's text (without
    BOOT_IMAGE=, and crashkernel= for -p), then a space and the last
    --append (concatenated, not merged)."""
    base: str | None = None
    if p.reuse_cmdline:
        from kexec_py.boundary import procfs

        current = env.backend().cmdline()
        drop = {"BOOT_IMAGE", "crashkernel"} if p.crash else {"BOOT_IMAGE"}
        base = " ".join(t for t in procfs.split_cmdline(current)
                        if procfs.param_name(t) not in drop)
    if base is None:
        return p.append
    if p.append is None:
        return base
    return f"{base} {p.append}"


def _check_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise Failed(f"Cannot open `{path}': {os.strerror(e.errno or _errno.EIO)}",
                     EXIT_USAGE, hint="check the path") from None
    os.close(fd)


def _load(p: Plan, env: Env) -> None:
    from kexec_py.load.execute import load, open_inputs
    from kexec_py.load.request import IMAGE_TYPES, LoadRequest

    if p.kernel is None:
        raise Failed("No kernel specified", EXIT_FAILED,
                     hint="give the kernel to load: kexec -l /boot/vmlinuz-VERSION")
    from pathlib import Path

    _check_file(p.kernel)
    if p.initrd is not None:
        _check_file(p.initrd)
    req = LoadRequest(kernel=Path(p.kernel),
                      initrd=Path(p.initrd) if p.initrd is not None else None,
                      crash=p.crash, syscall=p.syscall, entry=p.entry, mem_min=p.mem_min,
                      mem_max=p.mem_max, preserve_context=p.preserve_context)
    with open_inputs(req) as inputs:
        kind = inputs.image.kind
        found = next((t for t, k in IMAGE_TYPES.items() if k == kind), None)
        if p.image_type is not None:
            if p.image_type not in TYPES:
                raise Failed(f"Unsupported kernel type {p.image_type}", EXIT_FAILED,
                             hint="kexec-py knows -t bzImage64 and -t elf-x86_64")
            if TYPES[p.image_type] is None:
                raise Failed(f"Unsupported kernel type {p.image_type}", EXIT_FAILED,
                             hint=f"not implemented by kexec-py: {_NOT_X86_64}")
        if found is None:
            raise Failed(f"Cannot determine the file type of {p.kernel}", EXIT_FAILED,
                         hint="give an x86_64 bzImage (/boot/vmlinuz-*) or an ELF vmlinux"
                         + ("; an ELF core is resumed with 'kexec-py resume'"
                            if kind == "elf-core" else ""))
        if p.image_type is not None and p.image_type != found:
            raise Failed(f"Wrong file type {p.image_type}, file matches type {found}",
                         EXIT_FAILED, hint=f"drop -t, or give -t {found}")
        if p.args_none:
            if found != "elf-x86_64":
                raise Failed(f"kexec: --args-none applies to ELF images, and {p.kernel} is a "
                             "bzImage", EXIT_USAGE, hint="drop --args-none")
            if p.syscall == "file":
                raise Failed("kexec: --args-none needs kexec_load", EXIT_USAGE,
                             hint="drop -s (kexec_file_load takes only bzImages)")
            if p.initrd is not None or p.append is not None or p.reuse_cmdline:
                raise Failed("kexec: --args-none passes no command line and no initrd",
                             EXIT_USAGE, hint="drop --append/--reuse-cmdline/--initrd")
        req.cmdline = _cmdline(p, env)
        req.image_type = found
        be = env.backend()
        try:
            if p.args_none:
                _load_args_none(be, req, inputs.image)
            else:
                load(be, req, inputs)
        except KexecError as e:
            raise _load_failure(e, req) from None


def _load_args_none(be: Backend, req: LoadRequest, image: MappedFile) -> None:
    """--args-none for an ELF image: its PT_LOADs at their physical
    addresses and the ELF entry point; no entry stub, no boot parameters."""
    from kexec_py.formats import elf
    from kexec_py.load.execute import pack_plan
    from kexec_py.load.kernel import kexec_load_flags
    from kexec_py.memmap import MemoryMap

    img = elf.parse(image.data, str(req.kernel))
    elf.check_kernel(img)
    segs = elf.load_segments(img, "kernel PT_LOAD")
    entry = req.entry if req.entry is not None else img.physical_entry()
    ram = MemoryMap.of(be.memory_map()).ram_bytes()
    plan = pack_plan(sorted(segs, key=lambda s: s.mem), entry,
                     kexec_load_flags(req.preserve_context, req.crash), [], ram)
    call = plan.calls[0]
    be.kexec_load(plan.entry, call.segments, call.flags)


def _load_failure(e: KexecError, req: LoadRequest) -> Failed:
    from kexec_py.errors import FormatError, SyscallError, UnsupportedError

    if isinstance(e, SyscallError):
        call = e.message.split("(", 1)[0]
        if call == "kexec_file_load" and e.errno == _errno.ENOSYS:
            return Failed("syscall kexec_file_load not available.", EXIT_FALLBACK, e.message,
                          e.hint)
        if call in ("kexec_load", "kexec_file_load"):
            return Failed(f"{call} failed: {os.strerror(e.errno)}", EXIT_FAILED, e.message,
                          e.hint)
    if isinstance(e, FormatError):
        return Failed(f"Cannot load {req.kernel}", EXIT_FAILED, e.message, e.hint)
    if isinstance(e, UnsupportedError):
        return Failed(f"Cannot load {req.kernel}", EXIT_FAILED, e.message, e.hint)
    return Failed(f"Cannot load {req.kernel}", EXIT_FAILED, e.message, e.hint)


def _shutdown(env: Env) -> int:
    """``shutdown -r now`` as kexec-tools runs it: the first of
    /sbin/shutdown, /etc/shutdown, /bin/shutdown that execv() accepts
    replaces this process; the reboot path then boots the loaded kernel.
    Only for the running kernel at root / (:meth:`Env.touches_host`)."""
    assert env.touches_host()
    args = ["shutdown", "-r", "now"]
    last: OSError | None = None
    release()  # shutdown must not inherit blocked SIGINT/SIGTERM
    for path in ("/sbin/shutdown", "/etc/shutdown", "/bin/shutdown"):
        try:
            env.execv(path, args)
            return EXIT_OK  # only with a test's execv
        except OSError as e:
            last = e
    raise Failed(f"shutdown: {os.strerror(last.errno or _errno.ENOENT) if last else 'failed'}",
                 EXIT_FAILED, hint="run 'kexec -e' to boot the loaded kernel without shutdown")


def _reboot_in_backend(env: Env) -> int:
    """What ``shutdown -r now`` brings about, on a backend that is not this
    machine's kernel (the model): the reboot path boots the loaded kernel,
    so sync and exec it in the backend.  This machine's shutdown never runs."""
    be = env.backend()
    env.err.write(f"kexec: not running this machine's 'shutdown -r now' for the {be.name} "
                  f"backend: booting the loaded kernel in the {be.name}, as the reboot would\n")
    be.sync()
    try:
        be.reboot_kexec()
    except KexecError as e:
        raise _failed_call("kexec failed", e) from None
    return EXIT_OK


def _ifdown(trace: Callable[[str], None]) -> None:
    from kexec_py.frontend.netdown import ifdown

    ifdown(trace)


# --- entry points ---------------------------------------------------------------------


def env_from_environment(out: TextIO | None = None, err: TextIO | None = None) -> Env:
    """The Env of a ``kexec`` symlink, which has no global options: backend
    and root from KEXEC_PY_BACKEND / KEXEC_PY_ROOT (and KEXEC_PY_MODEL_STATE,
    KEXEC_PY_MODEL_KERNEL for the model), documented in kexec-py(8).  They
    can only steer the run away from this machine: to the model, or to a
    root other than /, where compat changes no kernel."""
    from pathlib import Path

    root = Path(os.environ.get("KEXEC_PY_ROOT") or "/")
    name = os.environ.get("KEXEC_PY_BACKEND") or "auto"
    opts: dict[str, Any] = {"kernel": os.environ.get("KEXEC_PY_MODEL_KERNEL") or "patched"}
    if os.environ.get("KEXEC_PY_MODEL_STATE"):
        opts["state_path"] = Path(os.environ["KEXEC_PY_MODEL_STATE"])
    cache: list[Backend] = []

    def backend() -> Backend:
        if not cache:
            from kexec_py.boundary.backends import auto_backend, open_backend

            which = auto_backend(root) if name == "auto" else name
            cache.append(open_backend(which, root, opts if which == "model" else None))
        return cache[0]

    def close() -> None:
        if cache:
            cache.pop().close()

    return Env(backend, root, out, err, close=close)


def main(argv: Sequence[str], prog: str = "kexec") -> int:
    """``kexec ARGS``: run and return the exit status (main.py exits)."""
    env = env_from_environment()
    try:
        return run(argv, env, prog)
    finally:
        env.close()
