"""SIGINT and SIGTERM, at any moment.

Either the command finishes (exit 0, its whole output) or it stops with one
``error: interrupted (SIGINT)`` line (exit 130, 143 for SIGTERM) having
changed nothing; never a traceback, never a success line before a
non-zero exit, and once a command has changed what is loaded it finishes
and says so.  The only other outcome is a signal that arrives before the
interpreter runs any of kexec-py's code: CPython's own start-up (killed by
the signal, or its site-import KeyboardInterrupt).

Every process here is ``python -m kexec_py`` on the model backend or a fake
--root: nothing reaches the host.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import make_bzimage, write

from kexec_py import __version__
from kexec_py.frontend.cli import run

REPO = Path(__file__).resolve().parent.parent
SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

# what a command prints when it has done its work (stdout with --json, or stderr)
SUCCESS = re.compile(r'"(loaded|unloaded|reset|executed)": true|^loaded |^unloaded |'
                     r"^model reset: |^model: executed|^kexec-py \d", re.M)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KEXEC_PY_")}


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kexec_py", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())


def _script(code: str, sig: int) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (which patches kexec-py, then runs its main() as the
    process's entry point) with ``SIG`` set to the signal number."""
    return subprocess.run([sys.executable, "-c", f"SIG = {int(sig)}\n" + textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=60,
                          check=False)


def _in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        run(list(argv))
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def _pre_our_code(rc: int, sig: int, err: str) -> bool:
    """The signal arrived before the interpreter ran kexec-py's code: it
    died of it (SIGINT before CPython installs its handler, SIGTERM before
    kexec-py installs one), or CPython's start-up (site, runpy) raised
    KeyboardInterrupt with no kexec_py frame on the stack."""
    if rc == -sig and err == "":
        return True
    if sig == signal.SIGINT and rc in (1, -sig) and err.rstrip().endswith("KeyboardInterrupt"):
        return "/kexec_py/" not in err
    return False


def _ignored_before_our_code(sig: int, err: str) -> bool:
    """A SIGINT that arrived before kexec_py._start blocked it (interpreter
    start-up, site, the import of the package) while an import lock's
    weakref callback ran: CPython raised KeyboardInterrupt there, printed
    "Exception ignored" and carried on.  No kexec_py frame is on that
    stack, and no handler of ours existed yet (ours raise Signalled)."""
    return (sig == signal.SIGINT and err.startswith("Exception ignored in: ")
            and err.rstrip().endswith("KeyboardInterrupt:") and "/kexec_py/" not in err
            and err.count("Traceback") == 1)


def _interrupted(rc: int, sig: int, out: str, err: str) -> None:
    """The one-line report of an interrupted command, and nothing else."""
    assert rc == 128 + sig, (rc, err)
    lines = [ln for ln in err.splitlines() if not ln.startswith("{")]  # --json events
    assert lines and lines[0].startswith("error: ") and "interrupted" in lines[0], err
    assert NAMES[sig] in lines[0], err
    assert all(ln.startswith("hint: ") for ln in lines[1:]), err
    assert "Traceback" not in err
    if out:
        doc = json.loads(out)
        assert doc["exit"] == rc and "interrupted" in doc["error"], out
    assert not SUCCESS.search(out) and not SUCCESS.search("\n".join(lines)), (out, err)


# --- a signal while kexec-py works, deterministically -------------------------------------


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
def test_a_signal_while_reading_proc_stops_with_one_line(tmp_path: Path, sig: int) -> None:
    """status blocks reading a FIFO in place of /sys/kernel/kexec_loaded: the
    signal surely arrives inside kexec-py's own code, after the imports."""
    root = make_root(tmp_path / "root", memmap=QEMU_MEMMAP)
    fifo = root / "sys/kernel/kexec_loaded"
    fifo.unlink()
    os.mkfifo(fifo)
    p = _start(["--backend", "linux", "--root", str(root), "--json", "status"])
    deadline = time.monotonic() + 20
    while True:  # opening the writing end succeeds once status has it open for reading
        try:
            wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.005)
    try:
        time.sleep(0.05)  # status now waits in read()
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        os.close(wfd)
    _interrupted(p.returncode, sig, out, err)
    assert err.splitlines() == [f"error: interrupted ({NAMES[sig]})"]


# --- committed work is finished and reported ------------------------------------------------


MODEL_SETUP = """\
import os, sys
STATE, ROOT, KERNEL = {state!r}, {root!r}, {kernel!r}
G = ["kexec-py", "--backend", "model", "--model-state", STATE, "--root", ROOT]
from kexec_py.boundary.backends import model
def at(name, after=False):
    orig = getattr(model.ModelBackend, name)
    def patched(self, *a, **kw):
        if not after:
            os.kill(os.getpid(), SIG)
        r = orig(self, *a, **kw)
        if after:
            os.kill(os.getpid(), SIG)
        return r
    setattr(model.ModelBackend, name, patched)
"""


@dataclass
class ModelBox:
    state: Path
    root: Path
    kernel: Path

    def setup(self) -> str:
        return MODEL_SETUP.format(state=str(self.state), root=str(self.root),
                                  kernel=str(self.kernel))

    def g(self) -> list[str]:
        return ["--backend", "model", "--model-state", str(self.state), "--root", str(self.root)]

    def status(self, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
        rc, out, err = _in_process(capsys, *self.g(), "--json", "status")
        assert rc == 0, err
        doc: dict[str, object] = json.loads(out)
        return doc

    def reset(self, capsys: pytest.CaptureFixture[str], loaded: bool) -> None:
        rc, _, err = _in_process(capsys, *self.g(), "model-reset", "--memory", "64M")
        assert rc == 0, err
        if loaded:
            rc, _, err = _in_process(capsys, *self.g(), "load", "-s", str(self.kernel))
            assert rc == 0, err


@pytest.fixture
def box(tmp_path: Path) -> ModelBox:
    (tmp_path / "root").mkdir()
    return ModelBox(tmp_path / "state", tmp_path / "root",
                    write(tmp_path / "bzImage", make_bzimage()))


# (command, the backend method at whose start the signal is sent, loaded before, after)
COMMITS = [
    (["model-reset", "--memory", "64M"], "reset", True, False),
    (["load", "-s", "{k}"], "kexec_file_load", False, True),
    (["unload"], "kexec_load", True, False),
    (["exec"], "reboot_kexec", True, False),
    (["compat", "--", "-l", "{k}"], "kexec_file_load", False, True),
    (["compat", "--", "{k}"], "kexec_file_load", False, False),  # load, then exec in the model
]


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
@pytest.mark.parametrize(("argv", "method", "before", "after"), COMMITS,
                         ids=[" ".join(c[0][:3]) for c in COMMITS])
def test_a_signal_during_the_change_waits_for_it(box: ModelBox, capsys: pytest.CaptureFixture[str],
                                                 sig: int, argv: list[str], method: str,
                                                 before: bool, after: bool) -> None:
    box.reset(capsys, before)
    args = [a.format(k=box.kernel) for a in argv]
    r = _script(box.setup() + f"at({method!r})\nsys.argv = G + {args!r}\n"
                "from kexec_py.frontend.main import main\nmain()\n", sig)
    assert r.returncode == 0, r.stderr
    assert "interrupted" not in r.stderr and "Traceback" not in r.stderr
    if args[0] != "compat":
        assert SUCCESS.search(r.stderr), r.stderr
    st = box.status(capsys)
    assert st["loaded"] is after
    if args in (["exec"], ["compat", "--", str(box.kernel)]):
        assert st["running"] != "the original kernel"


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
@pytest.mark.parametrize(("argv", "before"), [(["load", "-s", "{k}"], False), (["unload"], True),
                                             (["exec"], True), (["model-reset"], True),
                                             (["compat", "--", "-u"], True)])
def test_a_signal_before_the_change_changes_nothing(box: ModelBox,
                                                    capsys: pytest.CaptureFixture[str],
                                                    sig: int, argv: list[str],
                                                    before: bool) -> None:
    """The signal arrives while the backend is being opened: before anything
    was changed.  One line, 128 + the signal, the model as it was."""
    box.reset(capsys, before)
    st0 = box.status(capsys)
    args = [a.format(k=box.kernel) for a in argv]
    code = box.setup() + textwrap.dedent(f"""\
        orig_init = model.ModelBackend.__init__
        def init(self, *a, **kw):
            orig_init(self, *a, **kw)
            os.kill(os.getpid(), SIG)
        model.ModelBackend.__init__ = init
        sys.argv = G + {args!r}
        from kexec_py.frontend.main import main
        main()
        """)
    r = _script(code, sig)
    _interrupted(r.returncode, sig, r.stdout, r.stderr)
    assert box.status(capsys) == st0


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
def test_a_signal_right_after_a_staged_load_does_not_hide_it(
        box: ModelBox, capsys: pytest.CaptureFixture[str], sig: int) -> None:
    """staging.execute defers signals with its own handlers and restores
    ours when it returns; a signal that lands just after the last call is
    committed must neither undo the load nor turn its report into 130."""
    box.reset(capsys, False)
    code = box.setup() + textwrap.dedent("""\
        from kexec_py.load import staging
        orig = staging.execute
        def execute(*a, **kw):
            r = orig(*a, **kw)
            os.kill(os.getpid(), SIG)
            return r
        staging.execute = execute
        sys.argv = G + ["--json", "load", "--staged=always", "--segments-per-call", "1", KERNEL]
        from kexec_py.frontend.main import main
        main()
        """)
    r = _script(code, sig)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["loaded"] is True
    assert box.status(capsys)["loaded"] is True


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
def test_a_signal_during_a_staged_load_abandons_it(box: ModelBox,
                                                   capsys: pytest.CaptureFixture[str],
                                                   sig: int) -> None:
    """Between stages staging's own handlers take the signal: the partial
    image is unloaded, exit 128 + the signal (kexec_py/load/staging.py)."""
    box.reset(capsys, False)
    code = box.setup() + textwrap.dedent("""\
        calls = []
        orig = model.ModelBackend.kexec_load
        def kexec_load(self, *a, **kw):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), SIG)
            return orig(self, *a, **kw)
        model.ModelBackend.kexec_load = kexec_load
        sys.argv = G + ["load", "--staged=always", "--segments-per-call", "1", KERNEL]
        from kexec_py.frontend.main import main
        main()
        """)
    r = _script(code, sig)
    _interrupted(r.returncode, sig, r.stdout, r.stderr)
    assert "staged load interrupted" in r.stderr
    assert box.status(capsys)["loaded"] is False


# --- random signals at random moments ---------------------------------------------------------


@dataclass
class Case:
    name: str
    argv: list[str]
    ok: Callable[[str, str], bool]  # (stdout, stderr) of a complete run
    before: Callable[[], None] = lambda: None
    after: Callable[[bool], None] = lambda ok: None  # the state, given the exit was 0


def _cases(tmp: Path, box: ModelBox, capsys: pytest.CaptureFixture[str]) -> list[Case]:
    fake = make_root(tmp / "fake", memmap=QEMU_MEMMAP)
    k = str(box.kernel)
    status = ["--backend", "linux", "--root", str(fake), "--json", "status"]
    plan = ["--backend", "linux", "--root", str(fake), "--json", "load", "-c", k, "--dry-run"]
    ref = {name: subprocess.run([sys.executable, "-m", "kexec_py", *argv], capture_output=True,
                                text=True, cwd=REPO, env=_env(), check=True).stdout
           for name, argv in (("status", status), ("plan", plan))}
    g = box.g()

    def loaded(expect_if_ok: bool, expect_if_not: bool, running: str | None = None
               ) -> Callable[[bool], None]:
        def check(ok: bool) -> None:
            st = box.status(capsys)
            assert st["loaded"] is (expect_if_ok if ok else expect_if_not), (ok, st)
            if running is not None and not ok:
                assert st["running"] == running, st
        return check

    def doc(key: str) -> Callable[[str, str], bool]:
        return lambda out, err: json.loads(out).get(key) is True

    return [
        Case("version", ["--version"], lambda out, err: out == f"kexec-py {__version__}\n"),
        Case("status", status, lambda out, err: out == ref["status"]),
        Case("dry-run", plan, lambda out, err: out == ref["plan"]),
        Case("load", [*g, "--json", "load", "-s", k], doc("loaded"),
             lambda: box.reset(capsys, False), loaded(True, False)),
        Case("staged", [*g, "--json", "load", "--staged=always", "--segments-per-call", "1", k],
             doc("loaded"), lambda: box.reset(capsys, False), loaded(True, False)),
        Case("unload", [*g, "--json", "unload"], doc("unloaded"),
             lambda: box.reset(capsys, True), loaded(False, True)),
        Case("exec", [*g, "--json", "exec"], doc("executed"),
             lambda: box.reset(capsys, True), loaded(False, True, "the original kernel")),
        Case("reset", [*g, "--json", "model-reset", "--memory", "64M"], doc("reset"),
             lambda: box.reset(capsys, True), loaded(False, True)),
        Case("compat", [*g, "compat", "--", "-l", k], lambda out, err: out == err == "",
             lambda: box.reset(capsys, False), loaded(True, False)),
        Case("model-status", [*g, "--json", "status"], lambda out, err: "loaded" in out),
    ]


def test_random_signals_at_random_moments(tmp_path: Path, box: ModelBox,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(4242)
    cases = _cases(tmp_path, box, capsys)
    # how long each command takes undisturbed: the signals land in [0, 1.2 x that)
    took: dict[str, float] = {}
    for c in cases:
        c.before()
        t0 = time.monotonic()
        p = _start(c.argv)
        out, err = p.communicate(timeout=60)
        took[c.name] = time.monotonic() - t0
        assert p.returncode == 0 and c.ok(out, err), (c.name, p.returncode, err)
        c.after(True)
    outcomes: Counter[str] = Counter()
    early: list[str] = []
    runs = 0
    t_start = time.monotonic()
    while runs < 2 * len(cases) or (time.monotonic() - t_start < 12 and runs < 80):
        c = cases[runs % len(cases)]
        sig = rng.choice(SIGNALS)
        delay = rng.uniform(0, 1.2 * took[c.name])
        c.before()
        p = _start(c.argv)
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        rc = p.returncode
        what = (c.name, NAMES[sig], f"{delay * 1000:.0f} ms", rc, out, err)
        if rc == 0 and _ignored_before_our_code(sig, err):
            # CPython's own start-up took the SIGINT in a callback whose
            # exceptions it ignores, printed so, and went on; the command
            # itself must then have run as if undisturbed
            assert c.ok(out, ""), what
            c.after(True)
            outcomes["before kexec-py's code (ignored by CPython)"] += 1
        elif rc == 0:
            assert c.ok(out, err) and "Traceback" not in err, what
            c.after(True)
            outcomes["finished"] += 1
        elif _pre_our_code(rc, sig, err):
            c.after(False)
            outcomes["before kexec-py's code" + (" (CPython traceback)" if err else "")] += 1
            last = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("File ")]
            early.append(f"{c.name} {NAMES[sig]} at {delay * 1000:.0f} ms: rc {rc}"
                         + (f", {err.splitlines()[0]} ... {last[-1]}" if last else ""))
        else:
            _interrupted(rc, sig, out, err)
            c.after(False)
            outcomes["interrupted"] += 1
        runs += 1
    print(f"\n{runs} runs: {dict(outcomes)}")
    print("\n".join(f"  {e}" for e in early))
    assert outcomes["interrupted"] > 0 and outcomes["finished"] > 0, outcomes


@pytest.mark.parametrize("sig", SIGNALS, ids=NAMES.values())
def test_shutdown_runs_unblocked_after_a_signal_during_the_load(tmp_path: Path,
                                                                sig: int) -> None:
    """kexec KERNEL on the running kernel: a signal during the load waits, the
    load is made, and shutdown -r now replaces the process with SIGINT and
    SIGTERM neither blocked nor pending.  (System calls, execv, sysfs and the
    lock are replaced: nothing reaches the host.)"""
    k = write(tmp_path / "bzImage", make_bzimage())
    code = textwrap.dedent(f"""\
        import os, signal, sys
        os.environ.update(KEXEC_PY_BACKEND="linux", KEXEC_PY_ROOT="/")
        from kexec_py.frontend import compat
        from kexec_py.boundary import procfs, syscall
        def load(*a, **kw):
            os.kill(os.getpid(), SIG)
            print("kexec_file_load", flush=True)
        for name in ("kexec_load", "reboot_kexec", "sync"):
            setattr(syscall, name, lambda *a, **kw: sys.exit("unexpected " + name))
        syscall.kexec_file_load = load
        procfs.kexec_loaded = lambda root: True
        compat.Env.lock = lambda self: None
        def execv(path, args):
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            pending = signal.sigpending()
            print("execv", path, *args, sorted(blocked & {{SIG}}), sorted(pending), flush=True)
            os._exit(0)
        os.execv = execv
        sys.argv = ["kexec", {str(k)!r}, "--append=console=ttyS0"]
        from kexec_py.frontend.main import main
        main()
        """)
    r = _script(code, sig)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["kexec_file_load",
                                     "execv /sbin/shutdown shutdown -r now [] []"]
    assert r.stderr == ""


def test_a_signal_inside_class_creation_is_still_a_signal() -> None:
    """Python wraps what ``__set_name__`` raises in a RuntimeError (``import
    platform`` creates such a class): the Signalled behind it is found, so
    the report is "interrupted", not an internal error with a traceback."""
    from kexec_py.frontend import main as m

    class Setter:
        def __set_name__(self, owner: type, name: str) -> None:
            raise m.Signalled(15)

    with pytest.raises(RuntimeError) as ei:
        type("X", (), {"a": Setter()})
    found = m.signalled_by(ei.value)
    assert found is not None and found.signum == 15
    assert m.signalled_by(RuntimeError("a bug")) is None
