"""Helpers of the patched-kernel VM tests: boot a scenario of guest/ with
kstage.py in the initramfs, and read kstage.py's ``check``/``time`` lines."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vm import harness
from vm.harness import SerialLog, record

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
BUILD = HERE.parents[2] / "kernel" / "build.sh"
#: a clean build takes 5-7 minutes on 2 cores; a cached one seconds
BUILD_TIMEOUT = 3600


def boot(name: str, script: str, kernel: Path, payload: Path, *, memory: int = 512,
         smp: int = 1, append: str = "", params: Mapping[str, str] | None = None,
         timeout: int = harness.DEFAULT_TIMEOUT,
         extra_files: Mapping[str, Path | bytes] | None = None) -> SerialLog:
    """harness.boot of guest/SCRIPT as scenario NAME, with kstage.py in the
    initramfs and ``payload`` as /boot/vmlinuz; ``extra_files`` (guest path
    -> host file or contents) are added to the initramfs."""
    extra = {f"scenarios/{name}.sh": (GUEST / script).read_bytes(),
             "patched/kstage.py": (GUEST / "kstage.py").read_bytes(), **(extra_files or {})}
    initrd = harness.build_initrd(payload, extra)
    words = ["console=ttyS0", "panic=-1", f"kexec_py.scenario={name}"]
    words += [f"kexec_py.{k}={v}" for k, v in (params or {}).items()]
    if append:
        words.append(append)
    log = harness.boot(name, kernel, initrd, " ".join(words), memory, smp, timeout)
    if log.fatal():
        raise harness.HarnessError(f"{name}: the guest gave up: {log.fatal()}; log {log.path}")
    m = log.milestones()
    record("patched", f"BOOT {name}: " + " ".join(f"{k}={v:.1f}s" for k, v in m.items())
           + f" (qemu status {log.status}, TCG, {smp} CPU)", duration=log.duration,
           milestones=m, log=str(log.path))
    return log


def checks(log: SerialLog, step: str) -> dict[str, str]:
    """{check name: "ok" or "FAIL detail"} from kstage.py's output in STEP;
    fails on a crash of kstage.py or a failed check."""
    st = log.step(step)
    res: dict[str, str] = {}
    for line in st.out_lines:
        if line.startswith("check "):
            name, _, verdict = line[len("check "):].partition(": ")
            res[name] = verdict
    failed = {k: v for k, v in res.items() if v != "ok"}
    assert not failed, f"{step}: failed checks {failed}\n{st}\nlog: {log.path}"
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    assert "Traceback" not in st.err, st
    return res


def times(log: SerialLog, step: str) -> dict[str, float]:
    """{label: seconds} from kstage.py's ``time`` lines in STEP."""
    out: dict[str, float] = {}
    for line in log.step(step).out_lines:
        if line.startswith("time "):
            _, label, sec = line.split()
            out[label] = float(sec)
    return out


def require(res: dict[str, str], *names: str) -> None:
    missing = [n for n in names if n not in res]
    assert not missing, f"checks that did not run: {missing}"
