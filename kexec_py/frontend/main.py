"""Console entry point, kept light: ``--version`` never imports click.

Initramfs scripts call the tool many times; every import here costs
milliseconds natively and tens of milliseconds under emulation (so the
signal handling below uses the built-in ``_signal``, not ``signal``, which
imports enum).

Invoked under the name ``kexec`` (a symlink to the ``kexec-py`` script),
the program speaks kexec-tools' command line (:mod:`kexec_py.frontend.compat`).

SIGINT and SIGTERM: :func:`main` installs their handlers before anything
else.  Until a command starts to change something, a signal raises
:class:`Signalled` wherever the program is; nothing has changed yet, so
main() reports it with one line (``error: interrupted (SIGINT)``) and exits
128 + the signal (130, 143).  A command calls :func:`hold` just before it
commits a change (a load, an unload, an exec, a model reset) and before it
prints its result: from there to the exit, signals wait (blocked, and
ignored should one reach another thread), so a change that was made is
finished and reported, and a command that printed its result exits 0.
kexec_py/load/staging.py replaces these handlers with its own while a staged
load runs and puts them back when it returns; the CLI holds from the event
that reports the load's last call.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from types import FrameType
    from typing import Any
else:
    import _signal

#: SIGINT, SIGTERM
_SIGNALS = (_signal.SIGINT, _signal.SIGTERM)
_NAMES = {int(_signal.SIGINT): "SIGINT", int(_signal.SIGTERM): "SIGTERM"}


class Signalled(BaseException):
    """SIGINT or SIGTERM arrived before the command changed anything.

    A BaseException, like KeyboardInterrupt, so that no ``except
    Exception`` (or ``except KexecError``) on the way takes it for an error
    of its own; :func:`main` reports it.  ``signum``: the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signalled_by(exc: BaseException) -> Signalled | None:
    """The :class:`Signalled` behind ``exc``, if a signal is what it is.

    Python wraps an exception raised while a class is being created
    (``__set_name__``, e.g. in ``import platform``) in a RuntimeError, so a
    signal that lands there arrives as that error with the Signalled as its
    cause: a report of "internal error" would be wrong."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, Signalled):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.held = False
        #: the first signal: raised as Signalled, or (while held) only recorded
        self.first: int | None = None
        self.previous: dict[int, Any] = {}
        self.mask: set[int] | None = None
        #: main() caught the Signalled (it reports it)
        self.caught = False
        self.unraisable: Any = None


_st = _State()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _st.held or _st.first is not None:
        if _st.first is None:
            _st.first = signum
        return  # held: the command finishes; or it is stopping already
    _st.first = signum
    raise Signalled(signum)


def _unraisable(u: Any) -> None:
    """A Signalled raised inside a callback whose exceptions Python ignores
    (an import lock's weakref callback, a __del__) is not printed as a
    traceback: it is recorded in ``_st.first``, and :func:`hold` acts on it
    before the command changes anything."""
    if isinstance(u.exc_value, Signalled):
        return
    (_st.unraisable or sys.__unraisablehook__)(u)


def _install(restore_later: bool) -> None:
    _st.held, _st.first, _st.caught = False, None, False
    _st.unraisable = sys.unraisablehook
    sys.unraisablehook = _unraisable
    if restore_later:
        _st.mask = set(_signal.pthread_sigmask(_signal.SIG_BLOCK, ()))
    for s in _SIGNALS:
        try:
            prev = _signal.signal(s, _on_signal)
        except ValueError:  # not the main thread: signals are the main thread's business
            return
        if restore_later:
            _st.previous[s] = prev
    _st.installed = True


def _uninstall() -> None:
    _st.installed = False
    if _st.unraisable is not None:
        sys.unraisablehook = _st.unraisable
        _st.unraisable = None
    for s, h in _st.previous.items():
        if h is not None:
            _signal.signal(s, h)
    if _st.mask is not None:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _st.mask)
    _st.previous, _st.mask = {}, None
    _st.held, _st.first = False, None


def hold() -> None:
    """From now until the exit, SIGINT and SIGTERM wait: call it just before
    committing a change or printing a result.  A signal that arrived before
    this call raises :class:`Signalled` here, before the commit.  A no-op
    when :func:`main` did not install the handlers (the CLI run in-process,
    as the tests do)."""
    if not _st.installed or _st.held:
        return
    # blocking runs the handlers of the signals that arrived already
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _SIGNALS)
    _st.held = True
    if _st.first is not None and not _st.caught:
        # its Signalled was swallowed where Python ignores exceptions: act now,
        # before the change
        raise Signalled(_st.first)


def release() -> None:
    """Undo :func:`hold` before ``execv``: the program that replaces this one
    must not inherit blocked signals.  Signals that waited are dropped, as
    they would have been at the exit: the change they waited for is made,
    and the program goes on to its next step."""
    if not _st.installed or not _st.held:
        return
    for s in _SIGNALS:  # ignoring a signal discards it while it is pending
        _signal.signal(s, _signal.SIG_IGN)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _SIGNALS)
    for s in _SIGNALS:
        _signal.signal(s, _on_signal)
    _st.held, _st.first = False, None


def json_requested(args: list[str]) -> bool:
    """--json on the command line, or KEXEC_PY_JSON set to 1 or true."""
    import os

    return "--json" in args or os.environ.get("KEXEC_PY_JSON", "").lower() in ("1", "true")


def _prog(argv: list[str] | None, prog: str | None) -> str | None:
    """The name the program was invoked as: ``prog``, or argv[0] when main()
    is the process's entry point."""
    return sys.argv[0] if prog is None and argv is None else prog


def _is_compat(prog: str | None) -> bool:
    return prog is not None and prog.rsplit("/", 1)[-1] == "kexec"


def _interrupted(signum: int, argv: list[str] | None, prog: str | None) -> int:
    hold()
    compat = _is_compat(_prog(argv, prog))
    what = f"interrupted ({_NAMES.get(signum, f'signal {signum}')})"
    code = 128 + signum
    if not compat and json_requested(sys.argv[1:] if argv is None else argv):
        import json

        sys.stdout.write(json.dumps({"error": what, "hint": "", "exit": code}, indent=2) + "\n")
    sys.stderr.write(f"{'kexec' if compat else 'error'}: {what}\n")
    return code


def main(argv: list[str] | None = None, prog: str | None = None, *,
         caller_mask: set[int] | None = None) -> None:
    """Run kexec-py with ``argv`` (default: ``sys.argv[1:]``) and exit.

    ``prog`` is the name the program was invoked as (default:
    ``sys.argv[0]`` when ``argv`` is not given); a basename of ``kexec``
    selects the kexec-tools compatibility mode.

    Without ``argv`` this is the process's entry point: the signal handlers
    stay, and the process exits with SIGINT and SIGTERM blocked, so that no
    late signal changes its status.  With ``argv`` (a caller in the same
    process, such as a test) the handlers and the signal mask are put back
    before the SystemExit leaves.

    ``caller_mask``: the caller blocked SIGINT and SIGTERM before importing
    this module (``python -m kexec_py`` does); once the handlers are in
    place the mask becomes ``caller_mask``, and a signal that waited is
    handled."""
    try:
        _install(restore_later=argv is not None)
        if caller_mask is not None:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, caller_mask)
        try:
            code = _dispatch(sys.argv[1:] if argv is None else argv, _prog(argv, prog))
        except SystemExit as e:
            code = e.code
        hold()
    except Signalled as s:
        _st.caught = True
        code = _interrupted(s.signum, argv, prog)
    except KeyboardInterrupt:  # SIGINT before the handler was in place
        _st.caught = True
        code = _interrupted(int(_signal.SIGINT), argv, prog)
    except Exception as e:
        sig = signalled_by(e)
        if sig is None:
            raise
        _st.caught = True
        code = _interrupted(sig.signum, argv, prog)
    finally:
        if argv is not None:
            _uninstall()
    sys.exit(code)


def _dispatch(args: list[str], prog: str | None) -> Any:
    if _is_compat(prog):
        from kexec_py.frontend.compat import main as compat_main

        return compat_main(args, prog or "kexec")  # getopt's messages name argv[0] as given
    if args == ["--version"]:
        from kexec_py import __version__

        hold()
        sys.stdout.write(f"kexec-py {__version__}\n")
        return 0
    from kexec_py.frontend.cli import run

    run(args)
    return 0
