from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

from kexec_py.boundary import abi, syscall
from kexec_py.errors import SyscallError
from kexec_py.segments import Segment

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))


def test_generated_ffi_module_is_current(tmp_path: Path) -> None:
    import gen_ffi

    out = tmp_path / "_kexec_ffi.py"
    gen_ffi.build().emit_python_code(str(out))
    committed = (REPO / "kexec_py" / "boundary" / "_kexec_ffi.py").read_text()
    assert out.read_text() == committed, "run: python tools/gen_ffi.py"


def test_struct_layout_matches_abi() -> None:
    from kexec_py.boundary._kexec_ffi import ffi

    assert ffi.sizeof("struct kexec_segment") == abi.KEXEC_SEGMENT.size == 32
    assert ffi.offsetof("struct kexec_segment", "mem") == 16


def test_undefined_flag_fails_without_side_effects() -> None:
    # The status probe: an undefined flag bit is refused before anything is
    # touched (EINVAL), or the kernel has no kexec_load (ENOSYS), or we may
    # not call it (EPERM).  It never loads or unloads anything.
    with pytest.raises(SyscallError) as e:
        syscall.kexec_load(0, [], 0x8000)
    assert e.value.errno in (errno.EINVAL, errno.ENOSYS, errno.EPERM)
    assert e.value.message.startswith("kexec_load(entry=0x0, nr_segments=0, segments=[], "
                                      "flags=0x8000) = -1 E")
    assert e.value.hint


def test_error_names_the_segments() -> None:
    seg = Segment(0x100000, 0x1000, 4, b"abcd", "x")
    err = SyscallError("kexec_load(entry=0x1)", errno.EADDRNOTAVAIL, syscall.hint_for(
        errno.EADDRNOTAVAIL))
    assert str(err) == "kexec_load(entry=0x1) = -1 EADDRNOTAVAIL (Cannot assign requested address)"
    assert "page aligned" in err.hint
    assert seg.describe() == "x [0x100000, 0x101000) bufsz 0x4"


@pytest.mark.parametrize("err", [errno.EPERM, errno.EBUSY, errno.ENOEXEC, errno.ENOSYS,
                                 errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG,
                                 errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENOMEM])
def test_every_documented_errno_has_a_specific_hint(err: int) -> None:
    assert syscall.hint_for(err) != syscall.hint_for(errno.ERANGE)


def test_stage_bits() -> None:
    assert abi.stage_flags(abi.Stage.FINAL) == 0xC == abi.KEXEC_STAGE_MASK
    assert abi.flags_stage(abi.KEXEC_ARCH_X86_64 | 0x2 | 0x8) == abi.Stage.MID
    assert abi.KEXEC_UPDATE_ELFCOREHDR == abi.stage_flags(abi.Stage.START)
    assert abi.KEXEC_CRASH_HOTPLUG_SUPPORT == abi.stage_flags(abi.Stage.MID)
