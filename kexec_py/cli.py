"""The command line.  The only module that prints, exits, or maps errors
to exit codes: 0 ok, 1 runtime error (``error: ...`` and ``hint: ...`` on
stderr), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from kexec_py import __version__
from kexec_py.abi import KEXEC_SEGMENT_MAX
from kexec_py.backends import Backend, auto_backend, open_backend
from kexec_py.errors import KexecError
from kexec_py.output import emit_json, hexint, info

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Ctx:
    """What the global options gave every command."""

    backend_name: str
    root: Path
    json: bool
    verbose: int
    model_options: dict[str, Any] = field(default_factory=dict)
    _backend: Backend | None = None

    def backend(self) -> Backend:
        if self._backend is None:
            name = self.backend_name
            if name == "auto":
                name = auto_backend(self.root)
                if name == "model":
                    info(f"note: {self.root / 'sys/kernel/kexec_loaded'} is missing, so this "
                         "kernel has no kexec: using the model backend")
            self._backend = open_backend(name, self.root,
                                         self.model_options if name == "model" else None)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def log(self, level: int, msg: str) -> None:
        if self.verbose >= level:
            info(msg)


pass_ctx = click.make_pass_decorator(Ctx)

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "KEXEC_PY",
           "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="kexec-py",
                      message="%(prog)s %(version)s")
@click.option("--backend", type=click.Choice(["auto", "linux", "model"]), default="auto",
              show_default=True, show_envvar=True,
              help="What to talk to: the running kernel (linux) or the in-process model of "
                   "a kernel with the multi-stage load patch; auto picks linux when the "
                   "kernel has kexec.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, show_envvar=True,
              help="Read /proc and /sys (and keep the lock) under this directory.")
@click.option("--json", "as_json", is_flag=True, envvar="KEXEC_PY_JSON", show_envvar=True,
              help="Machine-readable output on stdout.")
@click.option("-v", "--verbose", count=True, help="More detail on stderr; -vv shows every "
              "system call with its arguments.")
@click.option("--model-state", type=click.Path(file_okay=False, path_type=Path),
              show_envvar=True,
              help="State directory of the model backend, shared by the commands that use "
                   "it (default: ROOT/run/kexec-py/model with --root, else under "
                   "$XDG_RUNTIME_DIR or /tmp/kexec-py-UID).")
@click.option("--model-kernel", type=click.Choice(["patched", "stock-6.1", "stock-6.6"]),
              default="patched", show_default=True, show_envvar=True,
              help="Which kernel the model backend behaves like.")
@click.pass_context
def cli(ctx: click.Context, backend: str, root: Path, as_json: bool, verbose: int,
        model_state: Path | None, model_kernel: str) -> None:
    """kexec-py: load and boot another kernel, or a hibernation image, from userspace."""
    opts: dict[str, Any] = {"kernel": model_kernel}
    if model_state is not None:
        opts["state_path"] = model_state
    c = Ctx(backend, root, as_json, verbose, opts)
    ctx.obj = c
    ctx.call_on_close(c.close)
    if verbose >= 2:  # every system call with its arguments and result, on stderr
        from kexec_py import syscall

        syscall.trace = info
        ctx.call_on_close(lambda: setattr(syscall, "trace", None))


# --- status --------------------------------------------------------------------


def _yn(x: bool | None) -> str:
    return "unknown" if x is None else ("yes" if x else "no")


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Report what is loaded and what this kernel allows.

    Says why a load would fail here (no CAP_SYS_BOOT, kexec_load_disabled,
    lockdown, load limits, missing system calls) before you try.
    """
    st = c.backend().status()
    if c.json:
        emit_json(st.to_json())
        return
    lines = [
        ("backend", st.backend),
        ("kernel", st.kernel or "unknown"),
        ("loaded", _yn(st.loaded)),
        ("crash loaded", _yn(st.crash_loaded)),
        ("crash size", hexint(st.crash_size)),
        ("kexec_load", st.kexec_load),
        ("kexec_file_load", st.kexec_file_load),
        ("staged load", "yes (/proc/kexec_pgmap)" if st.staged else "no"),
        ("lockdown", st.lockdown or "none"),
        ("kexec_load_disabled", _yn(st.load_disabled)),
        ("CAP_SYS_BOOT", _yn(st.cap_sys_boot)),
    ]
    for k, v in st.load_limits.items():
        lines.append((f"kexec_load_limit_{k}", "unlimited" if v < 0 else str(v)))
    if st.running is not None:
        lines.append(("running", st.running))
    if st.staging is not None:
        lines.append(("staged load in progress", st.staging))
    width = max(len(k) for k, _ in lines)
    out = [f"{k + ':':<{width + 1}} {v}" for k, v in lines]
    for p in st.problems:
        out.append(f"problem: {p}")
    click.echo("\n".join(out))


# --- load ------------------------------------------------------------------------


if TYPE_CHECKING:
    _IntParam = click.ParamType[int]
else:  # click < 8.2 has no generic ParamType
    _IntParam = click.ParamType


class Address(_IntParam):
    """A physical address or size: 0x1000, 4096, 0o10000, or with a K/M/G suffix."""

    name = "ADDR"
    _UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace("_", "")
        mult = 1
        if text and text[-1] in self._UNITS and not text.startswith("0x"):
            mult, text = self._UNITS[text[-1]], text[:-1]
        try:
            n = int(text, 0) * mult
        except ValueError:
            self.fail(f"{value!r} is not an address (try 0x1000000, 16M or 16777216)",
                      param, ctx)
        if n < 0 or n >= 1 << 64:
            self.fail(f"{value!r} is outside the 64-bit address space", param, ctx)
        return n


ADDR = Address()


if TYPE_CHECKING:
    _StrChoice = click.Choice[str]
else:  # click < 8.2 has no generic Choice
    _StrChoice = click.Choice


class StagedMode(_StrChoice):
    """``--staged [MODE]``: the value is optional, so a word after it is
    taken as the mode; say how to write it when that word is the kernel."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value not in self.choices:
            self.fail(f"{value!r} is not auto, always or never: write --staged=MODE, or put "
                      "--staged after KERNEL or before another option", param, ctx)
        return super().convert(value, param, ctx)


@cli.command()
@click.argument("kernel", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--initrd", "--ramdisk", "initrd", type=click.Path(dir_okay=False, path_type=Path),
              help="Initial ramdisk to pass to the new kernel.")
@click.option("--append", "--command-line", "append", metavar="TEXT",
              help="Command line for the new kernel.")
@click.option("--reuse-cmdline", is_flag=True,
              help="Start from this kernel's /proc/cmdline (without BOOT_IMAGE=, and "
                   "crashkernel= with -p); --append adds or replaces parameters.")
@click.option("-p", "--crash", "--load-panic", "crash", is_flag=True,
              help="Load a crash kernel, booted on panic.")
@click.option("-a", "--kexec-syscall-auto", "syscall", flag_value="auto", default=True,
              help="Try kexec_file_load(2) first and fall back to kexec_load(2) when it "
                   "fails with ENOSYS, EINVAL, ENOEXEC or ENOTSUP (the default; ELF images "
                   "and kexec_load-only options go straight to kexec_load).")
@click.option("-c", "--kexec-syscall", "syscall", flag_value="load",
              help="Use kexec_load(2) only: kexec-py parses the image and places segments.")
@click.option("-s", "--kexec-file-syscall", "--file-syscall", "syscall", flag_value="file",
              help="Use kexec_file_load(2) only: the kernel parses the image.")
@click.option("-t", "--type", "image_type", type=click.Choice(["bzImage64", "elf-x86_64"]),
              help="Insist on this image type (detected otherwise).")
@click.option("--entry", type=ADDR, help="Entry point for kexec_load instead of kexec-py's "
              "entry stub (kexec_load only).")
@click.option("--mem-min", type=ADDR, default=0, show_default=True,
              help="Lowest address segments may be placed at (kexec_load only).")
@click.option("--mem-max", type=ADDR, help="Highest address segments may use, inclusive "
              "(kexec_load only).")
@click.option("--load-preserve-context", "preserve_context", is_flag=True,
              help="Load with KEXEC_PRESERVE_CONTEXT (a kexec jump that can return); "
                   "kexec_load only.")
@click.option("--dry-run", is_flag=True, help="Print the plan (system call, entry, flags, "
              "segments) and call nothing; with --json, the plan document.")
@click.option("--staged", type=StagedMode(["auto", "always", "never"]), is_flag=False,
              flag_value="auto", default=None, metavar="[auto|always|never]",
              help="Load with kexec_load in stages of at most 16 segments (the multi-stage load "
                   "protocol; needs /proc/kexec_pgmap): auto only when one call cannot do it. "
                   "With --load-preserve-context and --mem-min/--mem-max: a hibernating kernel "
                   "confined to that window, every free page of it saved, and the backup map "
                   "injected.  Write --staged=MODE before KERNEL.")
@click.option("--segments-per-call", type=click.IntRange(1, 16), default=None, metavar="N",
              help="Put at most N segments in each kexec_load call (default 16, the kernel's "
                   "limit); a load that then needs more than one call is staged.")
@click.option("--backup-map", type=click.Choice(["elfcorehdr", "raw"]), default=None,
              help="Encoding of the backup pages map for --staged --load-preserve-context: "
                   "elfcorehdr (default; passed as elfcorehdr=SIZE@ADDR, read by /proc/vmcore) "
                   "or raw (kexec_backup_map=SIZE@ADDR).")
@pass_ctx
def load(c: Ctx, kernel: Path, initrd: Path | None, append: str | None, reuse_cmdline: bool,
         crash: bool, syscall: str, image_type: str | None, entry: int | None, mem_min: int,
         mem_max: int | None, preserve_context: bool, dry_run: bool, staged: str | None,
         segments_per_call: int | None, backup_map: str | None) -> None:
    """Load KERNEL to be booted by 'exec' (or on panic with -p)."""
    from kexec_py import loader, procfs

    if staged is not None or backup_map is not None or segments_per_call is not None:
        _load_staged(c, kernel, initrd, append, reuse_cmdline, crash, syscall, image_type,
                     entry, mem_min, mem_max, preserve_context, dry_run, staged or "auto",
                     backup_map, segments_per_call or KEXEC_SEGMENT_MAX)
        return
    if syscall == "file":
        only = [o for o, on in (("--entry", entry is not None), ("--mem-min", mem_min != 0),
                                ("--mem-max", mem_max is not None),
                                ("--load-preserve-context", preserve_context)) if on]
        if only:
            raise click.UsageError(f"{', '.join(only)} need kexec_load: drop -s or use -c")
    if crash and preserve_context:
        raise click.UsageError("-p and --load-preserve-context exclude each other")
    cmdline = append
    if reuse_cmdline:
        cmdline = procfs.reuse_cmdline(c.backend().cmdline(), append, crash)
    req = loader.LoadRequest(kernel=kernel, initrd=initrd, cmdline=cmdline, crash=crash,
                             syscall=syscall, entry=entry, mem_min=mem_min, mem_max=mem_max,
                             preserve_context=preserve_context, image_type=image_type)
    be = c.backend()
    if dry_run:
        plan = loader.plan_load(be, req, bytes(32))
        if c.json:
            emit_json(plan.to_json())
        else:
            from kexec_py import render

            render.print_plan(_console(), plan)
        return
    res = loader.load(be, req)
    if res.fallback_from:
        c.log(1, f"{res.fallback_from}: falling back to kexec_load")
    if c.json:
        emit_json({"loaded": True, "crash": crash, "syscall": res.syscall,
                   "flags": res.flags, "kernel": res.kernel, "initrd": res.initrd,
                   "cmdline": res.cmdline,
                   "entry": res.plan.entry if res.plan is not None else None,
                   "fallback_from": res.fallback_from})
    else:
        what = "crash kernel" if crash else "kernel"
        info(f"loaded {what} {kernel} with {res.syscall}")


def _console() -> Any:
    """A rich console on stdout: colour and boxes on a terminal, plain
    wide text otherwise (for scripts and pipes)."""
    from kexec_py.output import console

    con = console()
    if not con.is_terminal:
        con.width = max(con.width, 132)
    return con


# --- inspect ---------------------------------------------------------------------


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def inspect(c: Ctx, image: Path) -> None:
    """Show what IMAGE is (bzImage, ELF kernel, ELF core), its header fields
    and the segments kexec_load would get from it."""
    from kexec_py import loader

    def memmap() -> Any:
        return c.backend().memory_map()

    report = loader.inspect_image(image, memmap, c.root)
    if c.json:
        emit_json(report)
    else:
        from kexec_py import render

        render.print_inspect(_console(), report)


# --- exec / unload -------------------------------------------------------------


@cli.command("exec")
@click.option("--no-sync", is_flag=True, help="Do not sync file systems first.")
@pass_ctx
def exec_(c: Ctx, no_sync: bool) -> None:
    """Boot the loaded kernel now (like 'kexec -e').

    Returns only when the kernel refuses, or after a kernel loaded with
    --load-preserve-context jumped back.
    """
    be = c.backend()
    st = be.status()
    if st.loaded is False and not _model_can_return(be):
        raise KexecError("no kernel is loaded", "run 'kexec-py load KERNEL' first")
    if not no_sync:
        c.log(1, "syncing file systems")
        be.sync()
    be.reboot_kexec()
    if be.name == "model":
        _model_exec_report(c, be)
        return
    if c.json:
        emit_json({"executed": True, "returned": True})
    else:
        info("returned from the loaded kernel (kexec jump)")


@cli.command()
@click.option("-p", "--crash", "--load-panic", "crash", is_flag=True,
              help="Unload the crash kernel instead.")
@pass_ctx
def unload(c: Ctx, crash: bool) -> None:
    """Unload the loaded kernel (like 'kexec -u')."""
    from kexec_py import loader

    how = loader.unload(c.backend(), crash)
    if c.json:
        emit_json({"unloaded": True, "crash": crash, "syscall": how})
    else:
        info(f"unloaded the {'crash ' if crash else ''}kernel")


# --- compat ----------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def compat(c: Ctx, args: tuple[str, ...]) -> None:
    """Run a kexec-tools command line: 'kexec-py compat -- -l KERNEL --initrd=FILE'.

    The same as invoking kexec-py through a symlink named 'kexec': kexec-tools'
    options, exit statuses and first error lines (see COMPATIBILITY MODE in
    kexec-py(8)).  The global --backend and --root apply.
    """
    from kexec_py import compat as kexec_compat

    env = kexec_compat.Env(c.backend, c.root)
    raise click.exceptions.Exit(kexec_compat.run(list(args), env))


# --- the page map and the model ------------------------------------------------------


def _pgmap_runs(dst: Sequence[int], src: Sequence[int]) -> list[tuple[int, int, int]]:
    """(dst_pfn, src_pfn, pages) for each run of entries, in the kernel's
    order, where destination and source pages both go up by one."""
    runs: list[tuple[int, int, int]] = []
    i, n = 0, len(dst)
    while i < n:
        j = i + 1
        while j < n and dst[j] == dst[i] + (j - i) and src[j] == src[i] + (j - i):
            j += 1
        runs.append((dst[i], src[i], j - i))
        i = j
    return runs


@cli.command()
@click.option("--raw", is_flag=True,
              help="Print the map exactly as /proc/kexec_pgmap does: one line per page, "
                   "0x%016lx<TAB>0x%016lx (destination pfn, source pfn).")
@click.option("--limit", type=click.IntRange(min=0), default=40, show_default=True,
              help="Runs shown in the table (0: all of them).")
@pass_ctx
def pgmap(c: Ctx, raw: bool, limit: int) -> None:
    """Show the kernel's page map (/proc/kexec_pgmap) of the loaded image.

    For every destination page that is not loaded in place, the source page
    that holds its content until exec.  The table and --json group the map
    into runs (destination and source both consecutive) and count them;
    --raw prints the kernel's text.  Entries come in the kernel's order
    (the 2008 patch's hash order; sorted by destination with kernel/'s
    series; insertion order in the model); do not depend on it.  Needs a
    kernel with the multi-stage load patch (or --backend model).
    """
    pm = c.backend().pgmap()
    if raw:
        from kexec_py import procfs

        sys.stdout.write(procfs.format_pgmap(pm.pairs()))
        return
    runs = _pgmap_runs(pm.dst, pm.src)
    if c.json:
        emit_json({"pages": len(pm), "runs": [{"dst_pfn": d, "src_pfn": s, "pages": k}
                                              for d, s, k in runs]})
        return
    summary = (f"{len(pm)} pages not in place, in {len(runs)} runs"
               if len(pm) else "every page of the image is loaded in place: the map is empty")
    if not runs:
        click.echo(summary)
        return
    from rich.table import Table

    table = Table(title=summary, title_justify="left")
    table.add_column("destination", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("pages", justify="right")
    shown = runs if limit == 0 else runs[:limit]
    for d, s, k in shown:
        table.add_row(f"[{d << 12:#x}, {(d + k) << 12:#x})", f"[{s << 12:#x}, {(s + k) << 12:#x})",
                      str(k))
    if len(shown) < len(runs):
        table.add_row(f"... {len(runs) - len(shown)} more runs", "(--limit 0 shows all)", "")
    _console().print(table)


def _model_of(c: Ctx, what: str) -> Any:
    """The model backend, or an error naming ``what`` needs it."""
    from kexec_py.backends.model import ModelBackend
    from kexec_py.errors import UnsupportedError

    be = c.backend()
    if not isinstance(be, ModelBackend):
        raise UnsupportedError(f"{what} works with the model backend only",
                               "add --backend model (a real kernel's memory is /proc/vmcore)")
    return be


def _model_can_return(be: Backend) -> bool:
    """The model runs a kernel entered by a preserve-context jump: exec with
    nothing loaded returns to the kernel that jumped."""
    if be.name != "model":
        return False
    from kexec_py.backends.model import ModelBackend

    return isinstance(be, ModelBackend) and int(be.running()["depth"]) > 0


def _model_exec_report(c: Ctx, be: Any) -> None:
    """What exec did in the model (a real exec does not come back to say)."""
    jump = be.last_jump
    now = be.running()
    if c.json:
        emit_json({"executed": True, "returned": jump.what == "return",
                   "model": jump.to_json(), "running": now["text"]})
        return
    if jump.what == "return":
        info(f"model: returned to {jump.to_kernel}: {jump.pages} pages swapped back")
    elif jump.what == "jump":
        info(f"model: jumped to {jump.entry:#x} with preserve context ({jump.pages} pages "
             f"swapped); now running {now['name']}; 'kexec-py exec' with nothing loaded "
             "there returns")
    else:
        info(f"model: executed the image: {jump.pages} pages copied, jumped to "
             f"{jump.entry:#x}; now running {now['name']}")
    if jump.cmdline is not None and jump.what != "return":
        info(f"model: its command line: {jump.cmdline}")


@cli.command("dump-memory")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def dump_memory(c: Ctx, file: Path) -> None:
    """Write the model's physical memory to FILE as an ELF core file.

    One PT_LOAD per RAM run (p_paddr = physical address; zero pages are
    holes in the file), and a note "KPY-MODEL" (type 1) holding the model's
    state as JSON.  Check what exec produced with any ELF reader (readelf
    -l, gdb, crash, pyelftools).  Needs the model backend.
    """
    be = _model_of(c, "dump-memory")
    try:
        res = be.dump_memory(file)
    except OSError as e:
        raise KexecError(f"cannot write {file}: {e.strerror}", "check the path") from None
    if c.json:
        emit_json(res)
    else:
        info(f"wrote {file}: {res['loads']} PT_LOADs, {res['file_size']:#x} bytes, "
             f"{res['data_bytes']:#x} of them data")


@cli.command("model-reset")
@click.option("--memory", metavar="SIZE",
              help="RAM of a PC memory layout (e.g. 512M, 4G) instead of --root's memory map.")
@click.option("--crashkernel", metavar="SIZE@OFFSET",
              help="Reserve a crash kernel region in RAM (e.g. 64M@256M).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the order in which the page allocator hands out pages.")
@click.option("--collide", type=click.FloatRange(0.0, 1.0), default=0.25, show_default=True,
              help="How often the allocator first offers a page that is a destination of "
                   "the image being loaded (0: never).")
@click.option("--no-cap-sys-boot", is_flag=True,
              help="Make the model act as if kexec-py lacked CAP_SYS_BOOT (EPERM).")
@pass_ctx
def model_reset(c: Ctx, memory: str | None, crashkernel: str | None, seed: int, collide: float,
                no_cap_sys_boot: bool) -> None:
    """Start the model backend over: nothing loaded, memory all zero.

    Without options the machine is --root's memory map (its /proc/iomem or
    /sys/firmware/memmap), or a 512 MiB PC when --root has none.  Also the
    way out of a damaged or outdated model state.
    """
    from kexec_py.model import config as mc

    be = _model_of(c, "model-reset")
    base = mc.config_for_root(c.root) if memory is None else mc.ModelConfig(
        regions=mc.pc_layout(mc.parse_size(memory)), ram_source=f"a PC with {memory} of RAM")
    regions = base.regions
    if crashkernel is not None:
        regions = mc.with_crash_region(regions, *mc.parse_crashkernel(crashkernel))
    cfg = mc.ModelConfig(regions=regions, seed=seed, collide=collide,
                         cap_sys_boot=not no_cap_sys_boot, ram_source=base.ram_source)
    be.reset(cfg)
    ram = sum(r.range.size for r in cfg.regions if r.is_ram)
    if c.json:
        emit_json({"reset": True, "state": str(be.state_path) if be.state_path else None,
                   "config": cfg.to_json()})
    else:
        info(f"model reset: {ram >> 20} MiB of RAM ({cfg.ram_source}), seed {seed}; state in "
             f"{be.state_path}")


# --- staged loads, hibernation images ----------------------------------------------


def _load_staged(c: Ctx, kernel: Path, initrd: Path | None, append: str | None,
                 reuse_cmdline: bool, crash: bool, syscall: str, image_type: str | None,
                 entry: int | None, mem_min: int, mem_max: int | None, preserve_context: bool,
                 dry_run: bool, staged: str, backup_map: str | None,
                 segments_per_call: int) -> None:
    """``load --staged``: a kernel through the multi-stage protocol, or with
    --load-preserve-context and a window, a hibernating kernel with the
    backup pages map."""
    import os as _os

    from kexec_py import hibernate, loader, procfs

    if syscall == "file":
        raise click.UsageError("--staged loads with kexec_load: drop -s")
    if crash:
        raise click.UsageError("--staged cannot load a crash kernel (-p): the kernel refuses "
                               "staged loads for crash kernels")
    hib = preserve_context
    if backup_map is not None and not hib:
        raise click.UsageError("--backup-map needs --load-preserve-context (and --staged)")
    if hib and mem_max is None:
        raise click.UsageError("--staged --load-preserve-context needs --mem-min/--mem-max: the "
                               "window the hibernating kernel is confined to")
    be = c.backend()
    cmdline = append
    if reuse_cmdline:
        cmdline = procfs.reuse_cmdline(be.cmdline(), append, False)
    req = loader.LoadRequest(kernel=kernel, initrd=initrd, cmdline=cmdline, syscall="load",
                             entry=entry, mem_min=mem_min, mem_max=mem_max,
                             preserve_context=preserve_context, image_type=image_type)
    seed = bytes(32) if dry_run else _os.urandom(32)
    layout = None
    if hib:
        hl = hibernate.plan_hibernate_load(be, req, staged=staged,
                                           encoding=backup_map or "elfcorehdr", rng_seed=seed,
                                           max_segments=segments_per_call)
        sp, layout, cmdline = hl.staged, hl.layout, hl.cmdline
    else:
        sp = hibernate.plan_staged_kernel(be, req, staged=staged, rng_seed=seed,
                                          max_segments=segments_per_call)
    if dry_run:
        _print_plan(c, sp.plan)
        return
    res = _run_staged(c, be, sp, "loading")
    out: dict[str, Any] = {"loaded": True, "syscall": "kexec_load", "staged": sp.staged,
                           "calls": res.calls, "entry": sp.plan.entry,
                           "flags": sp.plan.calls[0].flags, "kernel": str(kernel),
                           "initrd": str(initrd) if initrd else None, "cmdline": cmdline}
    if layout is not None:
        out["backup_map"] = {
            "encoding": layout.encoding, "addr": layout.region.start,
            "placeholder": layout.region.size,
            "size": len(res.parameter) if res.parameter is not None else None,
            "pgmap_entries": len(res.pagemap) if res.pagemap is not None else None,
            "window": [layout.window.start, layout.window.end]}
    if c.json:
        emit_json(out)
    else:
        how = f"in {res.calls} staged calls" if sp.staged else "in one call"
        info(f"loaded {kernel} with kexec_load {how}")
        if layout is not None and res.parameter is not None:
            info(f"backup map ({layout.encoding}): {len(res.parameter):#x} bytes at "
                 f"{layout.region.start:#x}; the kernel is confined to {layout.window}")


def _print_plan(c: Ctx, plan: Any) -> None:
    if c.json:
        emit_json(plan.to_json())
    else:
        from kexec_py import render

        render.print_plan(_console(), plan)


def _run_staged(c: Ctx, be: Backend, sp: Any, label: str) -> Any:
    """Run a staged plan under the load lock, with a progress bar (bytes
    and the current stage) on a terminal, JSON event lines on stderr with
    --json, nothing otherwise."""
    import json as _json

    from kexec_py import staging
    from kexec_py.lock import LoadLock
    from kexec_py.output import ProgressBar

    total = sum(s.memsz for call in sp.plan.calls for s in call.segments)
    with LoadLock(c.root), ProgressBar(total, label, enabled=not c.json) as bar:
        def on_event(e: staging.Event) -> None:
            if c.json:
                sys.stderr.write(_json.dumps(e.to_json()) + "\n")
                return
            if e.kind == "call":
                bar.description = f"{label}: call {e.index}/{e.total} KS_{e.stage}"
                bar.update(e.bytes_done)
                c.log(2, f"call {e.index}/{e.total} KS_{e.stage}: {e.segments} segments, "
                         f"{e.bytes:#x} bytes")
            elif e.kind == "pgmap":
                c.log(1, f"/proc/kexec_pgmap: {e.data['entries']} pages, {e.data['moved']} "
                         "moved")
            elif e.kind == "unload":
                c.log(1, "the partial image was unloaded")

        return staging.execute(be, sp, on_event=on_event)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--entry", type=ADDR, help="Where to jump: the kexec_jump_back_entry= value the "
              "hibernating kernel saw (default: the one save-image recorded in the image).")
@click.option("--staged", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Load in stages of at most 16 segments: auto when one "
                                      "kexec_load call cannot hold the image.")
@click.option("--segments-per-call", type=click.IntRange(1, 16), default=16, show_default=True,
              metavar="N", help="Put at most N segments in each kexec_load call.")
@click.option("--dry-run", is_flag=True, help="Print the plan and call nothing; with --json, "
              "the plan document.")
@pass_ctx
def resume(c: Ctx, image: Path, entry: int | None, staged: str, segments_per_call: int,
           dry_run: bool) -> None:
    """Load hibernation IMAGE (an ELF core) for 'exec': every PT_LOAD at its
    physical address, entered at the image's jump-back entry."""
    from kexec_py import hibernate
    from kexec_py.formats.vmcore import open_core

    be = c.backend()
    with open_core(image) as img:
        sp = hibernate.plan_resume(be, img, entry=entry, staged=staged,
                                   max_segments=segments_per_call)
        if dry_run:
            _print_plan(c, sp.plan)
            return
        res = _run_staged(c, be, sp, "resuming")
        where, staged_ = sp.plan.entry, sp.staged
        del sp
    if c.json:
        emit_json({"loaded": True, "image": str(image), "entry": where, "calls": res.calls,
                   "staged": staged_})
    else:
        info(f"loaded {image} in {res.calls} call(s), entry {where:#x}: 'kexec-py exec' "
             "resumes it")


@cli.command("save-image")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", metavar="PATH|model:",
              help="The core to save: a file such as /proc/vmcore (default: ROOT/proc/vmcore), "
                   "or 'model:' for the /proc/vmcore of the model backend's running kernel "
                   "(the default with --backend model).")
@click.option("--entry", type=ADDR, help="Jump-back entry to record (default: "
              "kexec_jump_back_entry= from /proc/cmdline).")
@click.option("--keep-zero-pages", is_flag=True,
              help="Keep pages that read as zero in the PT_LOADs (as holes in the file); by "
                   "default they are left out, so that a resume need not load all of RAM.")
@pass_ctx
def save_image(c: Ctx, out: Path, source: str | None, entry: int | None,
               keep_zero_pages: bool) -> None:
    """In the hibernating kernel: stream /proc/vmcore to OUT as a hibernation
    image, recording the jump-back entry so that 'resume OUT' needs no --entry."""
    from kexec_py import hibernate
    from kexec_py.output import ProgressBar

    be = c.backend()
    if source is None:
        source = "model:" if be.name == "model" else str(c.root / "proc/vmcore")
    src: Any
    if source == "model:":
        src = hibernate.model_vmcore(be)
        cmdline = hibernate.model_cmdline(be)
    else:
        src = hibernate.FileSource(Path(source))
        cmdline = be.cmdline()
    if entry is None:
        entry = hibernate.jump_back_entry(cmdline)
        if entry is None:
            info("warning: no kexec_jump_back_entry= on /proc/cmdline: the image records no "
                 "entry, and 'resume' will need --entry")
    with ProgressBar(src.size, f"saving {out.name}", enabled=not c.json) as bar:
        def progress(phase: str, done: int, total: int) -> None:
            bar.description = f"{phase} {out.name}"
            bar.update(done, total)

        r = hibernate.save_image(src, out, jump_back=entry, keep_zero_pages=keep_zero_pages,
                                 progress=progress)
    if c.json:
        emit_json({"saved": r.out, "from": source, "file_size": r.file_size,
                   "data_bytes": r.data_bytes, "loads": r.loads,
                   "source_loads": r.source_loads, "zero_pages_left_out": r.zero_pages_left_out,
                   "jump_back_entry": r.jump_back_entry})
    else:
        info(f"saved {source} to {out}: {r.loads} PT_LOADs, {r.data_bytes:#x} bytes of data"
             + (f", jump-back entry {entry:#x}" if entry is not None else ""))


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo kernel and the image here (default: a temporary directory, "
                   "removed at the end).")
@click.option("--seed", type=int, default=1, show_default=True,
              help="Seed of the model's allocator and of the markers.")
@pass_ctx
def demo(c: Ctx, workdir: Path | None, seed: int) -> None:
    """The whole kexec-based hibernation cycle on the model backend, step by
    step; exits 0 only when every check holds."""
    import tempfile

    from kexec_py import demo as hib_demo
    from kexec_py.output import console

    con = console(stderr=True) if c.json else _console()
    if workdir is not None:
        res = hib_demo.run(con, workdir, seed=seed)
    else:
        with tempfile.TemporaryDirectory(prefix="kexec-py-demo-") as tmp:
            res = hib_demo.run(con, Path(tmp), seed=seed)
    if c.json:
        emit_json({"ok": res.ok, "seconds": round(res.seconds, 3),
                   "checks": [{"name": k.name, "ok": k.ok, "detail": k.detail}
                              for k in res.checks]})
    if not res.ok:
        failed = ", ".join(k.name for k in res.checks if not k.ok)
        raise KexecError(f"the demo failed: {failed}", "this is a bug in kexec-py or its model; "
                         "please report the output")


# --- running -----------------------------------------------------------------------


def _fail(e: KexecError, as_json: bool) -> NoReturn:
    sys.stderr.write(f"error: {e.message}\n")
    if e.hint:
        sys.stderr.write(f"hint: {e.hint}\n")
    if as_json:
        emit_json({"error": e.message, "hint": e.hint, "exit": e.exit_code})
    sys.exit(e.exit_code)


def run(args: list[str]) -> NoReturn:
    """Run the CLI with ``args`` and exit with its status."""
    as_json = "--json" in args or os.environ.get("KEXEC_PY_JSON", "").lower() in ("1", "true")
    try:
        rv = cli.main(args=args, prog_name="kexec-py", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else EXIT_ERROR)
    except click.Abort:
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except KexecError as e:
        _fail(e, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_ERROR)
    except Exception as e:  # a bug: say so plainly, the traceback only with -v
        if "-v" in args or "-vv" in args or "--verbose" in args:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: internal error: {type(e).__name__}: {e}\n"
                         "hint: this is a bug in kexec-py; run again with -v and report the "
                         "traceback\n")
        sys.exit(EXIT_ERROR)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _subcommand_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    obj = ctx.find_object(Ctx)
    if value and obj is not None:
        obj.json = True


def _add_json_to_subcommands(group: click.Group) -> None:
    """``--json`` is global, and scripts also write it after the command
    (``kexec-py status --json``): every subcommand accepts it too."""
    for cmd in group.commands.values():
        if not any(isinstance(p, click.Option) and "--json" in p.opts for p in cmd.params):
            cmd.params.append(click.Option(["--json"], is_flag=True, expose_value=False,
                                           callback=_subcommand_json,
                                           help="Machine-readable output on stdout (the same "
                                                "as the global --json)."))


_add_json_to_subcommands(cli)
