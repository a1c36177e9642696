"""-vv shows the system calls the model backend takes, as on the real kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kernelgen import make_bzimage

REPO = Path(__file__).resolve().parent.parent


def kexec_py(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kexec_py", *args], capture_output=True,
                          text=True, cwd=REPO, check=False)


def test_vv_traces_model_calls(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage())
    state = str(tmp_path / "model")
    base = ["-vv", "--backend", "model", "--model-state", state]
    assert kexec_py("--backend", "model", "--model-state", state, "model-reset",
                    "--memory", "256M").returncode == 0
    r = kexec_py(*base, "load", "-c", "--append", "console=ttyS0", str(kernel))
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("kexec_load(entry=0x") and lines[0].endswith("flags=0x3e0000)")
    assert any(line.startswith("  segment[0]: mem=0x") for line in lines)
    assert "  = 0" in lines
    r = kexec_py(*base, "load", "-s", "--append", "x", str(kernel))
    assert "kexec_file_load(kernel_fd=" in r.stderr and "cmdline='x'" in r.stderr
    r = kexec_py(*base, "exec", "--no-sync")
    assert "reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_KEXEC, NULL)" \
        in r.stderr
    # a refused call shows its errno, like strace
    r = kexec_py(*base, "unload")
    r = kexec_py(*base, "load", "-c", "--staged=always", "--segments-per-call", "1",
                 str(kernel))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("kexec_load(") >= 3
    r = kexec_py("--backend", "model", "--model-state", state, "model-reset",
                 "--no-cap-sys-boot")
    r = kexec_py(*base, "load", "-c", str(kernel))
    assert r.returncode == 1
    assert "  = -1 EPERM (Operation not permitted)" in r.stderr
