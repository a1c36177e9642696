"""``python -m kexec_py``: the same start as the console script
(:mod:`kexec_py._start` blocks SIGINT and SIGTERM until main() has its
handlers)."""

from kexec_py._start import main

main()
