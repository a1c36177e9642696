"""Generate ``kexec_py/boundary/_kexec_ffi.py``: cffi out-of-line ABI mode.

The generated module is committed: at run time it needs only
``_cffi_backend`` (no pycparser, no compiler), which keeps start-up near
ctypes' cost (bench/bench_startup.py measures start-up).  ``tests/test_syscall.py``
checks that the committed file equals what this script generates.

Usage: python tools/gen_ffi.py [OUTPUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

CDEF = """
struct kexec_segment {
    const void *buf;
    size_t bufsz;
    unsigned long mem;
    size_t memsz;
};
long syscall(long number, ...);
int sync(void);
"""


def build() -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("kexec_py.boundary._kexec_ffi", None)
    return ffi


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "kexec_py" / "boundary" / "_kexec_ffi.py"
    )
    build().emit_python_code(str(out))


if __name__ == "__main__":
    main()
