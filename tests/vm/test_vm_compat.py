"""Issue 7, kexec-tools compatibility: Debian's kexec-tools and kexec-py
invoked as ``kexec`` (a symlink) run the same command lines in the same
QEMU guest (Debian's kernel, TCG); their outcomes are compared row by row:
exit status, loaded state (/sys/kernel/kexec_loaded, kexec_crash_loaded),
and where scripts read it, the first line of stderr or stdout.

One boot holds every row that does not boot a second kernel
(guest/scenarios/compat.sh, 1 GiB with crashkernel=256M); the rows that do
(``kexec -l`` + ``kexec -e``, and ``kexec -f``) have a boot each per tool
(guest/scenarios/compat-boot.sh).

Debian 12 ships kexec-tools 2.0.25; its default system call is kexec_load
(-c) where 2.0.27+ and kexec-py try kexec_file_load first (-a): the rows
without -s/-c compare outcomes, not the call made.  A row whose outcome is
known to differ says so (``differs``) and asserts both sides.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pytest

from vm import harness
from vm.harness import SerialLog, record

pytestmark = pytest.mark.vm


@dataclass(frozen=True)
class Row:
    name: str
    #: exit status and (loaded, crash_loaded) after the run, the same for both tools
    rc: int | None
    state: str | None
    #: the first line of stderr must be this (both tools), or only equal between them
    first: str | None = None
    same_first: bool = False
    #: where kexec-tools 2.0.25 differs (documented): its rc, then kexec-py's
    differs: tuple[int, int] | None = None
    why: str = ""


ROWS = [
    Row("load-s", 0, "1 0"),
    Row("load-c", 0, "1 0"),
    Row("load-default", 0, "1 0"),
    Row("load-a", 0, "1 0"),
    Row("load-aliases", 0, "1 0"),
    Row("load-reuse", 0, "1 0"),
    Row("load-memrange", 0, "1 0"),
    Row("load-debug", 0, "1 0"),
    Row("load-type", 0, "1 0"),
    Row("load-type-wrong", 255, "0 0",
        first="Wrong file type elf-x86_64, file matches type bzImage64"),
    Row("load-missing", 1, "0 0",
        first="Cannot open `/nonexistent/vmlinuz': No such file or directory"),
    Row("load-junk", 255, "0 0", first="Cannot determine the file type of /tmp/junk"),
    Row("load-junk-s", 255, "0 0", first="Cannot determine the file type of /tmp/junk"),
    Row("load-nokernel", 255, "0 0", first="No kernel specified"),
    Row("panic-s", 0, "0 1"),
    Row("panic-default", 0, "0 1"),
    Row("unload", 0, "0 0"),
    Row("unload-s", 0, "0 0"),
    Row("unload-c", 0, "0 0"),
    Row("unload-p", 0, "0 0"),
    Row("status-none", 0, "0 0"),
    Row("status-crash", 1, "0 1"),
    Row("status-crash-p", 1, "0 1"),
    Row("status-l-none", 0, "0 0"),
    Row("status-l-loaded", 1, "1 0"),
    Row("bogus", 1, "0 0", first="kexec: unrecognized option '--bogus'"),
    Row("bogus-short", 1, "0 0", first="kexec: invalid option -- 'Z'"),
    Row("missing-value", 1, "0 0", first="kexec: option requires an argument -- 't'"),
    Row("unimplemented", 1, "0 0"),
    Row("preserve-nomax", 1, "0 0",
        first="Please specify memory range used by kexeced kernel"),
    Row("print-ckr-size", 0, "0 0"),
    Row("version", 0, "0 0"),
    Row("shutdown", 0, "1 0"),
    Row("exec-nothing", 1, "0 0", first="Nothing has been loaded!"),
    Row("exec-loader-option", 1, "1 0"),
]


@pytest.fixture(scope="module")
def table(vm_ready: None) -> SerialLog:
    log = harness.run_scenario("compat", memory=1024, append="crashkernel=256M",
                               timeout=900)
    record("compat", f"COMPAT table: {len(ROWS)} rows x 2 tools in one boot, "
           f"{log.duration:.0f} s (qemu status {log.status})", duration=log.duration,
           log=str(log.path))
    return log


def _first(st: harness.Step) -> str:
    """The first stderr line; getopt's messages start with argv[0] as invoked
    (/usr/sbin/kexec, /tmp/py/kexec): shown as "kexec:"."""
    line = st.err_lines[0] if st.err_lines else ""
    for prog in ("/usr/sbin/kexec:", "/tmp/py/kexec:"):
        if line.startswith(prog):
            return "kexec:" + line[len(prog):]
    return line


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_row(table: SerialLog, row: Row) -> None:
    tools, py = table.step(f"{row.name}.tools"), table.step(f"{row.name}.py")
    st_tools = table.step(f"{row.name}.tools.state").out.strip()
    st_py = table.step(f"{row.name}.py.state").out.strip()
    both = f"kexec-tools: {tools}\nkexec-py: {py}\nlog: {table.path}"
    assert "Traceback" not in py.err and "internal error" not in py.err, both
    if row.differs is not None:
        assert (tools.rc, py.rc) == row.differs, f"{row.why}\n{both}"
    else:
        assert tools.rc == py.rc == row.rc, both
    if row.state is not None:
        assert st_tools == st_py == row.state, f"states {st_tools!r} {st_py!r}\n{both}"
    if row.first is not None:
        assert _first(tools) == _first(py) == row.first, both
    if row.same_first:
        assert _first(tools) == _first(py), both


def test_print_ckr_size_prints_the_same_number(table: SerialLog) -> None:
    tools, py = table.step("print-ckr-size.tools"), table.step("print-ckr-size.py")
    assert tools.out == py.out and int(py.out) == 256 << 20, (tools, py)


def test_shutdown_is_run_as_kexec_tools_runs_it(table: SerialLog) -> None:
    for tool in ("tools", "py"):
        st = table.step(f"shutdown.{tool}")
        assert st.out_lines == ["@@SHUTDOWN -r now"], st


def test_debug_shows_the_system_calls(table: SerialLog) -> None:
    st = table.step("load-debug.py")
    assert any(line.startswith("kexec_file_load(kernel_fd=") for line in st.err_lines), st
    assert "  = 0" in st.err_lines, st


def test_loader_options_with_exec_are_named(table: SerialLog) -> None:
    st = table.step("exec-loader-option.py")
    assert _first(st) == "kexec: --append: only for loading a kernel", st


def test_unimplemented_options_are_named(table: SerialLog) -> None:
    st = table.step("unimplemented.py")
    assert _first(st) == "kexec: option '--reuseinitrd' is not implemented by kexec-py", st
    assert st.err_lines[1].startswith("hint: "), st
    versions = table.step("versions")
    assert versions.out_lines[0].startswith("kexec-tools ")
    assert versions.out_lines[1].startswith("kexec-py ")
    record("compat", f"COMPAT versions: {versions.out_lines[0]} vs {versions.out_lines[1]}")


BOOTS = [("tools", "e"), ("py", "e"), ("tools", "f"), ("py", "f")]


@pytest.mark.parametrize(("tool", "mode"), BOOTS, ids=[f"{t}-{m}" for t, m in BOOTS])
def test_the_second_kernel_boots(vm_ready: None, tool: str, mode: str) -> None:
    marker = f"compat-{tool}-{mode}-{secrets.token_hex(3)}"
    log = harness.run_scenario("compat-boot", params={"tool": tool, "mode": mode,
                                                      "marker": marker},
                               log_name=f"compat-boot-{tool}-{mode}")
    if mode == "e":
        assert log.step("load").rc == 0, log.step("load")
        assert log.step("loaded").out.strip() == "1"
    # exec never returned: the second kernel booted with our command line
    assert "exec" not in log.steps and "force" not in log.steps, (log.steps, log.tail())
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    exec_at, stage2_at = log.at("@@EXEC"), log.at("@@STAGE2 uptime")
    assert exec_at is not None and stage2_at is not None and stage2_at > exec_at
    record("compat", f"COMPAT boot {tool} -{mode}: exec -> second /init "
           f"{stage2_at - exec_at:.1f} s (host time, TCG)", tool=tool, mode=mode)
