"""Kernel load plans: golden --dry-run --json plans, the choice of system
call with its fallback, and the layout compared with kexec-tools.

How our layout differs from kexec-tools 2.0.25 (``kexec -d -c -l``) for the
same kernel, initrd, command line and memory map, and why:

- kernel payload and initrd: the same addresses, memsz and bufsz.  Both
  place top-down in the same order (entry code, setup block, payload with
  ``init_size`` aligned to ``kernel_alignment``, initrd above 16 MiB), so
  as long as our smaller entry code and setup block leave the same 2 MiB
  slot free for the payload, every address below it is the same.
- entry code: kexec-tools loads its purgatory, an ELF object of 0x9000
  bytes (code, SHA-256 of the segments, stack); kexec-py loads its 0xb8-byte
  entry stub in one page (kexec_py/arch/x86/entry.py) and checks no digest.  The
  entry point is the start of the stub, not a symbol inside a purgatory.
- setup block: kexec-tools copies the whole real-mode setup code (the
  ``setup_sects`` sectors, 0x5000 for Debian's 6.1) and puts the command
  line plus 64 spare bytes after it (bufsz 0x5057 for a 22-byte command
  line, memsz 0x6000); kexec-py loads only the 4 KiB zero page, the command
  line and the setup_data chain (0x1050 bytes, two pages): nothing runs the
  real-mode code.
- RNG seed: kexec-tools puts its 48-byte SETUP_RNG_SEED setup_data in a
  segment of its own, bottom-up at 0x100000 (the "bufsz 0x30" segment);
  kexec-py chains it inside the boot_params segment, so there is one
  segment fewer and nothing is written at 1 MiB.
- e820: kexec-tools starts the first RAM entry at 0x400 (it hides the
  real-mode IVT); kexec-py passes the firmware map as it is: the kernel
  reserves the first page itself.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import iomem_for, make_bzimage, make_elf, vmlinux_spec, write

from kexec_py.boundary import abi, procfs
from kexec_py.errors import FormatError, PlanError, SyscallError, UnsupportedError
from kexec_py.frontend.cli import cli
from kexec_py.load import execute, request
from kexec_py.segments import Segment

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KEXEC_PY_UPDATE_GOLDEN") == "1"
CMDLINE = "console=ttyS0 panic=-1"


def initrd_bytes(size: int = 3 * 1024 * 1024 + 123) -> bytes:
    return bytes((i * 7) & 0xFF for i in range(256)) * (size // 256) + bytes(size % 256)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    root = make_root(tmp_path / "root", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))
    return {
        "root": root,
        "bzimage": write(tmp_path / "bzImage", make_bzimage(init_size=0x3F98000,
                                                            payload_size=0x9000)),
        "vmlinux": write(tmp_path / "vmlinux", make_elf(vmlinux_spec())),
        "initrd": write(tmp_path / "initrd.img", initrd_bytes()),
    }


def dry_run(root: Path, *args: str, as_json: bool = True) -> Any:
    opts = ["--backend", "linux", "--root", str(root)] + (["--json"] if as_json else [])
    r = CliRunner().invoke(cli, [*opts, "load", *args, "--dry-run"])
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.output) if as_json else r.output


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with KEXEC_PY_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed (KEXEC_PY_UPDATE_GOLDEN=1 rewrites it)"


GOLDEN_CASES = {
    "plan-bzimage-qemu512": ("bzimage", ["-c", "--initrd", "{initrd}", "--append", CMDLINE]),
    "plan-vmlinux-qemu512": ("vmlinux", ["-c", "--initrd", "{initrd}", "--append", CMDLINE]),
    "plan-vmlinux-auto-is-kexec-load": ("vmlinux", ["--append", CMDLINE]),
    "plan-bzimage-window": ("bzimage", ["-c", "--initrd", "{initrd}", "--mem-min", "0x8000000",
                                        "--mem-max", "0xfffffff"]),
    "plan-preserve-context": ("vmlinux", ["--load-preserve-context", "--mem-min", "0x1000000",
                                          "--mem-max", "0x3ffffff", "--append", CMDLINE]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_plan_json(inputs: dict[str, Path], name: str) -> None:
    kernel, args = GOLDEN_CASES[name]
    args = [a.format(initrd=inputs["initrd"]) for a in args]
    plan = dry_run(inputs["root"], str(inputs[kernel]), *args)
    # the contract of ARCHITECTURE.md, exactly
    assert list(plan) == ["syscall", "entry", "calls"]
    for call in plan["calls"]:
        assert list(call) == ["stage", "flags", "segments"]
        assert all(list(s) == ["mem", "memsz", "bufsz"] for s in call["segments"])
        assert all(isinstance(s[k], int) for s in call["segments"] for k in s)
    check_golden(f"{name}.json", json.dumps(plan, indent=2) + "\n")


def test_golden_plan_is_stable_across_runs(inputs: dict[str, Path]) -> None:
    args = [str(inputs["bzimage"]), "-c", "--initrd", str(inputs["initrd"]), "--append", CMDLINE]
    assert dry_run(inputs["root"], *args) == dry_run(inputs["root"], *args)


def test_golden_plan_text(inputs: dict[str, Path]) -> None:
    out = dry_run(inputs["root"], str(inputs["bzimage"]), "-c", "--initrd",
                  str(inputs["initrd"]), "--append", CMDLINE, as_json=False)
    assert "\x1b[" not in out  # no escape codes off a terminal
    assert all(line == line.rstrip() for line in out.splitlines())
    out = out.replace(str(inputs["bzimage"]), "BZIMAGE")
    check_golden("plan-bzimage-qemu512.txt", out)


def test_bzimage_plan_layout(inputs: dict[str, Path]) -> None:
    plan = dry_run(inputs["root"], str(inputs["bzimage"]), "-c", "--initrd",
                   str(inputs["initrd"]), "--append", CMDLINE)
    assert plan["syscall"] == "kexec_load"
    (call,) = plan["calls"]
    assert call["stage"] == "full" and call["flags"] == 0x3E0000  # as kexec-tools sends
    segs = call["segments"]
    assert [s["mem"] for s in segs] == [0x1C000000 - 0x301000, 0x1C000000, 0x1FFDD000, 0x1FFDF000]
    initrd, kernel, params, stub = segs
    assert kernel["memsz"] == 0x3F98000 and kernel["bufsz"] == 0x9000  # init_size; payload
    assert initrd["bufsz"] == len(initrd_bytes()) and initrd["mem"] + initrd["memsz"] <= \
        kernel["mem"]
    assert plan["entry"] == stub["mem"] and stub["memsz"] == 0x1000
    assert params["mem"] + params["memsz"] == stub["mem"]


def test_vmlinux_plan_layout(inputs: dict[str, Path]) -> None:
    plan = dry_run(inputs["root"], str(inputs["vmlinux"]), "--initrd", str(inputs["initrd"]))
    assert plan["syscall"] == "kexec_load"  # ELF images: always kexec_load
    segs = plan["calls"][0]["segments"]
    assert [(s["mem"], s["memsz"]) for s in segs[:4]] == [
        (0x1000000, 0x3000), (0x1200000, 0x2000), (0x1202000, 0x1000), (0x1203000, 0x5000)]
    assert plan["entry"] == segs[-1]["mem"]  # the stub, top of RAM


def test_preserve_context_flags_and_window(inputs: dict[str, Path]) -> None:
    plan = dry_run(inputs["root"], str(inputs["vmlinux"]), "--load-preserve-context",
                   "--mem-min", "16M", "--mem-max", "0x3ffffff")
    (call,) = plan["calls"]
    assert call["flags"] == abi.KEXEC_ARCH_X86_64 | abi.KEXEC_PRESERVE_CONTEXT
    segs = call["segments"]
    # the window [16 MiB, 64 MiB) is covered exactly, without overlap
    assert segs[0]["mem"] == 0x1000000 and segs[-1]["mem"] + segs[-1]["memsz"] == 0x4000000
    for a, b in zip(segs, segs[1:], strict=False):
        assert a["mem"] + a["memsz"] == b["mem"]


def test_preserve_context_window_too_large(inputs: dict[str, Path]) -> None:
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(inputs["root"]), "load",
                                 str(inputs["vmlinux"]), "--load-preserve-context",
                                 "--dry-run"])
    assert isinstance(r.exception, PlanError)
    assert "more than half of RAM" in r.exception.message
    assert "--mem-min/--mem-max" in r.exception.hint


def test_jump_back_digits_are_in_the_command_line(inputs: dict[str, Path]) -> None:
    be = FakeBackend(inputs["root"])
    req = request.LoadRequest(kernel=inputs["vmlinux"], cmdline="quiet", syscall="load",
                             preserve_context=True, mem_min=0x1000000, mem_max=0x3FFFFFF)
    plan = execute.plan_kexec_load(be, req, bytes(32))
    params = next(s for s in plan.segments if s.name == "boot_params")
    stub = next(s for s in plan.segments if s.name == "entry stub")
    assert params.buf is not None and stub.buf is not None
    cmd = bytes(params.buf[4096:]).split(b"\0")[0]
    assert cmd == b"quiet kexec_jump_back_entry=0x0000000000000000"
    digits = params.mem + 4096 + len(cmd) - 16
    assert digits.to_bytes(8, "little") in bytes(stub.buf)  # the stub's JUMP_BACK_DIGITS


def test_entry_override(inputs: dict[str, Path]) -> None:
    plan = dry_run(inputs["root"], str(inputs["bzimage"]), "--entry", "0x1c000200")
    assert plan["entry"] == 0x1C000200 and plan["syscall"] == "kexec_load"
    out = dry_run(inputs["root"], str(inputs["bzimage"]), "--entry", "0x1c000200",
                  as_json=False)
    assert "--entry 0x1c000200 replaces the entry stub" in out


def test_file_load_plan(inputs: dict[str, Path]) -> None:
    plan = dry_run(inputs["root"], str(inputs["bzimage"]), "-s", "--initrd",
                   str(inputs["initrd"]))
    assert plan == {"syscall": "kexec_file_load", "entry": 0, "calls": []}
    out = dry_run(inputs["root"], str(inputs["bzimage"]), "--initrd", str(inputs["initrd"]),
                  as_json=False)
    assert "plan: kexec_file_load" in out and "falls back to kexec_load" in out


@pytest.mark.parametrize(("args", "words", "code"), [
    (["-s", "{vmlinux}"], "is an ELF image: kexec_file_load takes only bzImages", 1),
    (["-s", "--entry", "0x1000", "{bzimage}"], "--entry need kexec_load", 2),
    (["-s", "--mem-max", "1G", "{bzimage}"], "--mem-max need kexec_load", 2),
    (["-p", "--load-preserve-context", "{bzimage}"], "exclude each other", 2),
    (["-p", "-c", "{bzimage}"], "crash kernels through kexec_load", 1),
    (["-c", "--mem-min", "0x2000", "--mem-max", "0x1000", "{bzimage}"], "below --mem-min", 1),
    (["-c", "--mem-max", "lots", "{bzimage}"], "is not an address", 2),
    (["-c", "-t", "elf-x86_64", "{bzimage}"], "is not of type elf-x86_64: it is bzImage64", 1),
    (["-c", "{initrd}"], "neither a bzImage nor an ELF file", 1),
])
def test_refusals(inputs: dict[str, Path], args: list[str], words: str, code: int) -> None:
    argv = ["--backend", "linux", "--root", str(inputs["root"]), "load",
            *[a.format(**{k: str(v) for k, v in inputs.items()}) for a in args], "--dry-run"]
    p = subprocess.run([sys.executable, "-m", "kexec_py", *argv],
                       capture_output=True, text=True, check=False,
                       cwd=Path(__file__).parent.parent)
    assert p.returncode == code, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr


# --- the system call, with a backend that records ------------------------------------


class FakeBackend:
    """Records calls; kexec_file_load fails with ``file_errno`` if set."""

    name = "fake"

    def __init__(self, root: Path, file_errno: int | None = None) -> None:
        self.root = root
        self.file_errno = file_errno
        self.calls: list[tuple[Any, ...]] = []

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                        flags: int) -> None:
        self.calls.append(("kexec_file_load", flags))
        if self.file_errno is not None:
            raise SyscallError("kexec_file_load(...)", self.file_errno)

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        import mmap

        for s in segments:
            if s.name in ("kernel", "initrd"):  # big buffers point into the file mapping
                assert isinstance(s.buf, memoryview) and isinstance(s.buf.obj, mmap.mmap)
        self.calls.append(("kexec_load", entry, len(segments), flags))

    def memory_map(self) -> Any:
        return procfs.memory_map(self.root)


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.ENOTSUP])
def test_auto_falls_back_to_kexec_load(inputs: dict[str, Path], err: int) -> None:
    be = FakeBackend(inputs["root"], err)
    req = request.LoadRequest(kernel=inputs["bzimage"], initrd=inputs["initrd"], cmdline=CMDLINE)
    res = execute.load(be, req)  # type: ignore[arg-type]
    assert [c[0] for c in be.calls] == ["kexec_file_load", "kexec_load"]
    assert res.syscall == "kexec_load" and res.fallback_from and res.plan is not None
    assert be.calls[1][3] == 0x3E0000


@pytest.mark.parametrize("err", [errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG, errno.EPERM,
                                 errno.EBUSY])
def test_signature_and_other_errors_are_final(inputs: dict[str, Path], err: int) -> None:
    be = FakeBackend(inputs["root"], err)
    req = request.LoadRequest(kernel=inputs["bzimage"])
    with pytest.raises(SyscallError) as e:
        execute.load(be, req)  # type: ignore[arg-type]
    assert e.value.errno == err and [c[0] for c in be.calls] == ["kexec_file_load"]


def test_s_never_falls_back_and_c_never_tries_file(inputs: dict[str, Path]) -> None:
    be = FakeBackend(inputs["root"], errno.ENOSYS)
    with pytest.raises(SyscallError):
        execute.load(be, request.LoadRequest(kernel=inputs["bzimage"], syscall="file"))  # type: ignore[arg-type]
    be = FakeBackend(inputs["root"])
    execute.load(be, request.LoadRequest(kernel=inputs["bzimage"], syscall="load"))  # type: ignore[arg-type]
    assert [c[0] for c in be.calls] == ["kexec_load"]


def test_elf_and_kexec_load_options_skip_file_load(inputs: dict[str, Path]) -> None:
    for req in (request.LoadRequest(kernel=inputs["vmlinux"]),
                request.LoadRequest(kernel=inputs["bzimage"], mem_min=0x1000000),
                request.LoadRequest(kernel=inputs["bzimage"], entry=0x1C000200)):
        be = FakeBackend(inputs["root"])
        execute.load(be, req)  # type: ignore[arg-type]
        assert [c[0] for c in be.calls] == ["kexec_load"]


def test_crash_fallback_is_refused(inputs: dict[str, Path]) -> None:
    be = FakeBackend(inputs["root"], errno.ENOEXEC)
    with pytest.raises(UnsupportedError, match="cannot fall back to kexec_load for a crash"):
        execute.load(be, request.LoadRequest(kernel=inputs["bzimage"], crash=True))  # type: ignore[arg-type]


def test_core_is_not_a_kernel(inputs: dict[str, Path], tmp_path: Path) -> None:
    from kernelgen import ElfSpec, Load

    core = write(tmp_path / "core", make_elf(ElfSpec(loads=[Load(0x100000, 0x10, 0x10)],
                                                     e_type=4)))
    with pytest.raises(FormatError, match="is an ELF core") as e:
        execute.plan_kexec_load(FakeBackend(inputs["root"]),  # type: ignore[arg-type]
                               request.LoadRequest(kernel=core, syscall="load"))
    assert "kexec-py resume" in e.value.hint


# --- compared with kexec-tools -------------------------------------------------------

KT_SEG = re.compile(r"segment\[(\d+)\]\.(buf|bufsz|mem|memsz)\s*=\s*(0x[0-9a-f]+|[0-9a-f]+)")


def parse_kexec_debug(text: str) -> dict[str, Any]:
    """The first ``kexec_load: entry = ... flags = ...`` block of ``kexec -d``."""
    i = text.index("kexec_load: entry = ")
    block = text[i:]
    m = re.match(r"kexec_load: entry = (0x[0-9a-f]+) flags = (0x[0-9a-f]+)\s*nr_segments = "
                 r"(\d+)", block)
    assert m, block[:200]
    n = int(m.group(3))
    segs: dict[int, dict[str, int]] = {}
    for idx, key, val in KT_SEG.findall(block):
        k = int(idx)
        if k < n and key != "buf" and key not in segs.setdefault(k, {}):
            segs[k][key] = int(val, 16)
    return {"entry": int(m.group(1), 16), "flags": int(m.group(2), 16),
            "segments": [segs[k] for k in range(n)]}


def compare_with_kexec_tools(ours: dict[str, Any], kt: dict[str, Any], init_size: int,
                             initrd_size: int) -> None:
    """The comparison the module docstring explains."""
    assert ours["calls"][0]["flags"] == kt["flags"] == 0x3E0000
    o = sorted(ours["calls"][0]["segments"], key=lambda s: s["mem"])
    k = sorted(kt["segments"], key=lambda s: s["mem"])
    o_kernel = next(s for s in o if s["memsz"] == (init_size + 0xFFF) & ~0xFFF)
    k_kernel = next(s for s in k if s["memsz"] == (init_size + 0xFFF) & ~0xFFF)
    assert o_kernel == k_kernel  # same payload placement
    o_initrd = next(s for s in o if s["bufsz"] == initrd_size)
    k_initrd = next(s for s in k if s["bufsz"] == initrd_size)
    assert o_initrd == k_initrd  # same initrd placement
    # kexec-tools: purgatory of 0x9000 at the very top, then setup (kern16 + cmdline + 64)
    k_top = k[-1]
    assert k_top["memsz"] == 0x9000 and kt["entry"] > k_top["mem"]
    # ours: the stub page at the very top and the entry at its first byte
    assert o[-1]["memsz"] == 0x1000 and ours["entry"] == o[-1]["mem"]
    assert o[-1]["mem"] + 0x1000 == k_top["mem"] + 0x9000  # both end at the top of RAM
    # kexec-tools' RNG seed segment at 1 MiB, if it had entropy; ours has none there
    extra = [s for s in k if s["bufsz"] == 0x30]
    assert all(s["mem"] == 0x100000 for s in extra)
    assert len(o) == len(k) - len(extra)


RECORDED = GOLDEN / "kexec-tools-2.0.25-host.json"

#: The setup header of the Debian kernel of the recording, as far as a
#: placement reads it.  The recording gives the file's size and init_size;
#: setup_sects follows from kexec-tools' setup segment (0x5057 = the
#: 0x5000 bytes of setup code, the command line with its NUL, 64 spare
#: bytes), the payload from its kernel segment (the file less the setup
#: code); the rest is what every Debian 6.1 amd64 kernel has (boot protocol
#: 2.15, CONFIG_PHYSICAL_ALIGN=0x200000, CONFIG_PHYSICAL_START=0x1000000,
#: LOADED_HIGH, xloadflags 0x7f, a 2047-byte command line).
RECORDED_HEADER = {"version": 0x020F, "setup_sects": 0x27, "init_size": 0x3F98000,
                   "kernel_alignment": 0x200000, "relocatable": 1, "xloadflags": 0x7F,
                   "loadflags": 0x1, "pref_address": 0x1000000, "cmdline_size": 0x7FF}


def test_recorded_kexec_tools_layout(tmp_path: Path) -> None:
    """kexec-tools 2.0.25 ``-d -c -l`` captured on a 24 GiB host (the
    memory map and the output are in the golden file), replayed with a
    kernel and an initrd made here that are the recorded ones to a
    placement: the same header fields and sizes (the contents of neither
    file move a segment)."""
    rec = json.loads(RECORDED.read_text())
    kt = rec["kexec_tools"]
    setup = (RECORDED_HEADER["setup_sects"] + 1) * 512
    payload = rec["kernel_size"] - setup
    # the header is the recorded kernel's: kexec-tools' setup and kernel segments say so
    assert RECORDED_HEADER["init_size"] == rec["init_size"]
    assert {"bufsz": setup + len(rec["cmdline"]) + 1 + 64, "memsz": 0x6000} in \
        [{k: s[k] for k in ("bufsz", "memsz")} for s in kt["segments"]]
    assert {"bufsz": payload, "memsz": rec["init_size"]} in \
        [{k: s[k] for k in ("bufsz", "memsz")} for s in kt["segments"]]
    kernel = write(tmp_path / rec["kernel"], make_bzimage(payload_size=payload,
                                                          **RECORDED_HEADER))
    initrd = write(tmp_path / rec["initrd"], initrd_bytes(rec["initrd_size"]))
    assert kernel.stat().st_size == rec["kernel_size"]
    assert initrd.stat().st_size == rec["initrd_size"]
    mm = [(int(s, 16), int(e, 16), k) for s, e, k in rec["memmap"]]
    root = make_root(tmp_path / "root", memmap=mm, iomem=iomem_for(mm))
    ours = dry_run(root, str(kernel), "-c", "--initrd", str(initrd), "--append", rec["cmdline"])
    compare_with_kexec_tools(ours, kt, rec["init_size"], rec["initrd_size"])


def test_parse_kexec_debug() -> None:
    text = ("kexec_load: entry = 0x63fff7760 flags = 0x3e0000\nnr_segments = 2\n"
            "segment[0].buf   = 0x55e8d40d1300\nsegment[0].bufsz = 0x30\n"
            "segment[0].mem   = 0x100000\nsegment[0].memsz = 0x1000\n"
            "segment[1].buf   = 0x7f85c0edd010\nsegment[1].bufsz = 1db8c00\n"
            "segment[1].mem   = 0x63a247000\nsegment[1].memsz = 0x1db9000\n")
    kt = parse_kexec_debug(text)
    assert kt["entry"] == 0x63FFF7760 and kt["flags"] == 0x3E0000
    assert kt["segments"][1] == {"bufsz": 0x1DB8C00, "mem": 0x63A247000, "memsz": 0x1DB9000}
