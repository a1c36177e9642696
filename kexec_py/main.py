"""Console entry point, kept light: ``--version`` never imports click.

Initramfs scripts call the tool many times; every import here costs
milliseconds natively and tens of milliseconds under emulation.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from kexec_py import __version__

        sys.stdout.write(f"kexec-py {__version__}\n")
        sys.exit(0)
    from kexec_py.cli import run

    run(args)
