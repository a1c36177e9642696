"""The start of the ``kexec-py`` console script (and of ``kexec``, a symlink
to it), and of ``python -m kexec_py``.

Importing this module blocks SIGINT and SIGTERM, before :mod:`kexec_py.frontend.main`
and what it imports are loaded; :func:`kexec_py.frontend.main.main` puts the mask
back once its handlers are in place.  A signal in between waits for them
instead of raising KeyboardInterrupt in the middle of an import (a
traceback).  Only the program's entry imports this module: a library user
or a test that imported it would have those signals blocked.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:  # the built-in module: ``signal`` imports enum, milliseconds at start-up
    import _signal

_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGINT, _signal.SIGTERM))


def main() -> None:
    """Run kexec-py with ``sys.argv`` and exit."""
    from kexec_py.frontend.main import main as run

    run(caller_mask=set(_mask))
