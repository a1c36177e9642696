"""Console entry point, kept light: ``--version`` never imports click.

Initramfs scripts call the tool many times; every import here costs
milliseconds natively and tens of milliseconds under emulation.

Invoked under the name ``kexec`` (a symlink to the ``kexec-py`` script),
the program speaks kexec-tools' command line (:mod:`kexec_py.compat`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Run kexec-py with ``argv`` (default: ``sys.argv[1:]``) and exit.

    ``prog`` is the name the program was invoked as (default:
    ``sys.argv[0]`` when ``argv`` is not given); a basename of ``kexec``
    selects the kexec-tools compatibility mode."""
    args = sys.argv[1:] if argv is None else argv
    if prog is None and argv is None:
        prog = sys.argv[0]
    if prog is not None and prog.rsplit("/", 1)[-1] == "kexec":
        from kexec_py.compat import main as compat_main

        sys.exit(compat_main(args, prog))  # getopt's messages name argv[0] as given
    if args == ["--version"]:
        from kexec_py import __version__

        sys.stdout.write(f"kexec-py {__version__}\n")
        sys.exit(0)
    from kexec_py.cli import run

    run(args)
