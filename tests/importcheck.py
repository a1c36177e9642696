"""Which heavy modules a kexec-py command imports (tests only)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("rich", "elftools", "cffi", "pycparser")


def heavy_modules_after(args: list[str]) -> list[str]:
    """Run ``kexec-py ARGS`` in a fresh interpreter (it must exit 0) and
    return the modules of :data:`HEAVY` it imported."""
    code = ("import sys\nfrom kexec_py.frontend.main import main\n"
            f"try:\n    main({args!r})\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    return list(ast.literal_eval(out.strip().splitlines()[-1]))
