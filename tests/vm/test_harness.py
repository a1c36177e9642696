"""The harness itself, without QEMU: the cpio writer and the log parser."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vm import harness


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, rdevmajor, rdevminor) of each entry, checking the
    alignment the kernel's unpacker relies on."""
    out = []
    off = 0
    while True:
        assert off % 4 == 0
        hdr = data[off:off + 110]
        assert hdr[:6] == b"070701", (off, hdr[:6])
        f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[off + 110:off + 110 + namesize]
        assert name.endswith(b"\0")
        off += 110 + namesize
        off += -off % 4
        body = data[off:off + filesize]
        off += filesize
        off += -off % 4
        if name == b"TRAILER!!!\0":
            assert data[off:].strip(b"\0") == b""
            return out
        out.append((name[:-1].decode(), f[1], body, f[9], f[10]))


def _sample(tmp_path: Path) -> bytes:
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "sub" / "odd").write_bytes(b"12345")
    (tmp_path / "t" / "link").symlink_to("sub/odd")
    buf = io.BytesIO()
    c = harness.Cpio(buf)
    c.chardev("dev/console", 5, 1)
    c.file("etc/x", b"abc", 0o600)
    c.tree(tmp_path / "t", "opt")
    c.close()
    return buf.getvalue()


def test_cpio_newc_entries(tmp_path: Path) -> None:
    entries = {e[0]: e for e in _read_newc(_sample(tmp_path))}
    assert list(entries)[:2] == ["dev", "dev/console"]  # parents before children
    _, mode, _, major, minor = entries["dev/console"]
    assert stat.S_ISCHR(mode) and (major, minor) == (5, 1)
    assert entries["etc/x"][2] == b"abc" and stat.S_IMODE(entries["etc/x"][1]) == 0o600
    assert entries["opt/sub/odd"][2] == b"12345"
    assert stat.S_ISLNK(entries["opt/link"][1]) and entries["opt/link"][2] == b"sub/odd"
    assert stat.S_ISDIR(entries["opt/sub"][1])
    assert entries["opt"][1] & 0o777 == 0o755


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio(1)")
def test_cpio_readable_by_gnu_cpio(tmp_path: Path) -> None:
    r = subprocess.run(["cpio", "-it", "--quiet"], input=_sample(tmp_path), capture_output=True,
                       check=True)
    assert r.stdout.decode().split() == ["dev", "dev/console", "etc", "etc/x", "opt",
                                         "opt/link", "opt/sub", "opt/sub/odd"]


LOG = """\
SeaBIOS
[    0.000000] Linux version 6.1.0 (x)
@@INIT uptime=2.1 kernel=6.1.0
@@STEP status rc=0
@@O status|{"loaded": false,
[    3.1] a kernel message in between
@@O status|"x": "a|b"}
@@E status|note
@@END status
@@STEP bad rc=1
@@E bad|error: it broke
@@TIME kexec-py-load t0=5.20 t1=6.85 rc=0
@@TIME kexec-py-load t0=7.00 t1=8.50 rc=0
@@EXEC uptime=9
[    0.000000] Linux version 6.1.0 (y)
@@STAGE2 uptime=1.5
@@STAGE2 marker=m-1
@@STAGE2 cmdline=console=ttyS0 KEXEC_PY_MARKER=m-1
"""


def test_parse_serial_log(tmp_path: Path) -> None:
    lines = [(float(i), line) for i, line in enumerate(LOG.splitlines())]
    log = harness.parse(harness.SerialLog("t", tmp_path / "t.log", lines, 0, 20.0, "", []))
    st = log.step("status")
    assert st.rc == 0 and st.json() == {"loaded": False, "x": "a|b"}
    assert st.err == "note\n"
    assert log.step("bad").rc == 1 and log.step("bad").err_lines == ["error: it broke"]
    assert log.times("kexec-py-load") == [1.65, 1.5]
    assert log.stage2 == {"uptime": "1.5", "marker": "m-1",
                          "cmdline": "console=ttyS0 KEXEC_PY_MARKER=m-1"}
    assert log.milestones() == {"linux": 1.0, "init": 2.0, "exec": 13.0, "stage2_linux": 14.0,
                                "stage2_init": 15.0, "end": 20.0}
    assert list(log.milestones()) == ["linux", "init", "exec", "stage2_linux", "stage2_init",
                                      "end"]
    with pytest.raises(AssertionError, match="no step 'missing'"):
        log.step("missing")
