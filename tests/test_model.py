"""The model backend: state across instances, locking, permissions, the
kernel's segment rules, kexec_file_load, crash images, errors."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from fakeroot import make_root
from kernelgen import make_bzimage

from kexec_py.boundary import abi, procfs
from kexec_py.boundary.abi import PAGE_SIZE, Stage, stage_flags
from kexec_py.boundary.backends import open_backend
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import KexecError, SyscallError
from kexec_py.model.config import ModelConfig, pc_layout, with_crash_region
from kexec_py.model.store import default_state_path
from kexec_py.segments import Segment

P = PAGE_SIZE
NOWHERE = Path("/nonexistent-root")


def model(tmp: Path, **kw: object) -> ModelBackend:
    return ModelBackend(NOWHERE, state_path=tmp / "state", **kw)  # type: ignore[arg-type]


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(SyscallError) as exc:
        fn(*args)  # type: ignore[operator]
    return exc.value.errno


def seg(mem: int, data: bytes, pages: int = 1) -> Segment:
    return Segment(mem, pages * P, len(data), data)


# --- the machine ------------------------------------------------------------------------


def test_default_machine_is_a_512_mib_pc(tmp_path: Path) -> None:
    b = model(tmp_path)
    ram = [(r.start, r.end) for r in b.memory_map() if r.is_ram]
    assert ram == [(0x1000, 0x9F000), (0x100000, 0x20000000)]
    assert b.kernel.pool.n == (0x9F000 - 0x1000 + 0x20000000 - 0x100000) // P
    st = b.status()
    assert st.backend == "model" and st.kernel == "model:patched" and st.staged is True
    assert st.loaded is False and st.running == "the original kernel"
    b.close()


def test_machine_from_root_iomem(tmp_path: Path) -> None:
    iomem = ("00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n"
             "00100000-3fffffff : System RAM\n  10000000-13ffffff : Crash kernel\n")
    root = make_root(tmp_path / "root", iomem=iomem, cmdline="root=/dev/sda1 quiet")
    b = ModelBackend(root)
    assert b.state_path == root / "run/kexec-py/model"
    assert b.cmdline() == "root=/dev/sda1 quiet"
    assert [(r.start, r.end, r.kind) for r in b.memory_map()] == [
        (0, 0x1000, "Reserved"), (0x1000, 0x9FC00, "System RAM"),
        (0x100000, 0x10000000, "System RAM"), (0x10000000, 0x14000000, "Crash kernel"),
        (0x14000000, 0x40000000, "System RAM")]
    assert b.status().crash_size == 0x4000000
    b.close()


def test_unreadable_iomem_falls_back_to_the_default(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", iomem="00000000-00000000 : System RAM\n")
    b = ModelBackend(root)
    assert b.kernel.config.ram_source == "default 512 MiB PC"
    b.close()


def test_default_state_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEXEC_PY_MODEL_STATE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert default_state_path(Path("/")) == tmp_path / "xdg/kexec-py/model"
    assert default_state_path(tmp_path) == tmp_path / "run/kexec-py/model"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_state_path(Path("/")).name == "model"
    assert default_state_path(Path("/")).parent.name == f"kexec-py-{os.geteuid()}"
    monkeypatch.setenv("KEXEC_PY_MODEL_STATE", str(tmp_path / "env"))
    assert default_state_path(tmp_path) == tmp_path / "env"


def test_open_backend_passes_model_options(tmp_path: Path) -> None:
    be = open_backend("model", NOWHERE, {"kernel": "stock-6.1",
                                         "state_path": tmp_path / "s"})
    assert isinstance(be, ModelBackend) and be.flavour == "stock-6.1"
    assert be.staged_supported() is False
    be.close()


# --- state across invocations -------------------------------------------------------------


def test_state_survives_separate_instances(tmp_path: Path) -> None:
    b = model(tmp_path)
    b.kexec_load(0x100000, [seg(0x100000, b"one", 2)], stage_flags(Stage.START))
    b.close()
    b = model(tmp_path)
    st = b.status()
    assert st.loaded is False and st.staging is not None
    first = b.pgmap().pairs()
    b.close()
    b = model(tmp_path)
    b.kexec_load(0, [seg(0x300000, b"two")], stage_flags(Stage.FINAL))
    b.close()
    b = model(tmp_path)
    assert b.status().loaded is True
    assert b.pgmap().pairs()[:len(first)] == first
    b.reboot_kexec()
    b.close()
    b = model(tmp_path)
    assert b.read_phys(0x100000, 3) == b"one" and b.read_phys(0x300000, 3) == b"two"
    jump = b.last_jump
    assert jump is not None and jump.entry == 0x100000 and jump.what == "exec"
    assert b.status().running == "image@0x100000, entered at 0x100000 by kexec from original"
    assert b.check_invariants() == []
    b.close()


def test_the_allocator_order_continues_across_instances(tmp_path: Path) -> None:
    """One instance doing two loads and two instances doing one each agree."""
    def run(split: bool, where: Path) -> list[tuple[int, int]]:
        b = model(where)
        b.kexec_load(0, [seg(0x200000, b"a", 8)], stage_flags(Stage.START))
        if split:
            b.close()
            b = model(where)
        b.kexec_load(0, [seg(0x400000, b"b", 8)], stage_flags(Stage.FINAL))
        pairs = b.pgmap().pairs()
        b.close()
        return pairs

    assert run(False, tmp_path / "x") == run(True, tmp_path / "y")


def test_ebusy_while_another_instance_holds_the_model(tmp_path: Path) -> None:
    a = model(tmp_path)
    a.kexec_load(0, [seg(0x100000, b"a")], 0)
    b = model(tmp_path)
    assert b.status().loaded is False  # readers see the last saved state
    assert errno_of(b.kexec_load, 0, [seg(0x200000, b"b")], 0) == errno.EBUSY
    assert errno_of(b.reboot_kexec) == errno.EBUSY
    a.close()
    assert b.status().loaded is False  # b's snapshot predates a's save ...
    b.close()
    b = model(tmp_path)
    assert b.status().loaded is True  # ... a new look sees it
    b.kexec_load(0, [seg(0x200000, b"b")], 0)
    b.close()


def test_corrupt_or_foreign_state_is_refused_with_a_hint(tmp_path: Path) -> None:
    b = model(tmp_path)
    b.kexec_load(0, [seg(0x100000, b"a")], 0)
    b.close()
    state = tmp_path / "state" / "state"
    good = state.read_bytes()
    state.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])
    with pytest.raises(KexecError, match="checksum") as exc:
        model(tmp_path).status()
    assert "model-reset" in exc.value.hint
    state.write_bytes(good[:8] + struct.pack("<I", 99) + good[12:])
    with pytest.raises(KexecError, match="version 99"):
        model(tmp_path).status()
    state.write_bytes(b"nonsense")
    with pytest.raises(KexecError, match="bad magic"):
        model(tmp_path).status()
    b = model(tmp_path)
    b.reset()
    assert b.status().loaded is False
    b.close()
    assert model(tmp_path).status().loaded is False


def test_an_interrupted_invocation_is_recovered(tmp_path: Path) -> None:
    b = model(tmp_path)
    b.kexec_load(0, [seg(0x100000, b"a")], stage_flags(Stage.START))
    b.flush()
    # the next stage starts, then the process dies before it saves
    b.kexec_load(0, [seg(0x200000, b"b")], stage_flags(Stage.MID))
    assert b.store is not None and b.store.dirty() == {"load"}
    b.store.unlock()
    c = model(tmp_path)
    assert c.status().staging is not None  # a reader cannot tell yet
    c.kexec_load(0, [seg(0x300000, b"c")], 0)  # the next writer recovers
    st = c.status()
    assert st.loaded is True and st.staging is None
    assert any("interrupted during a staged load" in p for p in st.problems)
    assert c.check_invariants() == []
    c.close()


def test_flavour_cannot_change_under_a_loaded_image(tmp_path: Path) -> None:
    b = model(tmp_path)
    b.kexec_load(0, [seg(0x100000, b"a")], 0)
    b.close()
    with pytest.raises(KexecError, match="runs the patched kernel"):
        model(tmp_path, kernel="stock-6.1").status()
    b = model(tmp_path)
    b.kexec_load(0, [], 0)
    b.close()
    s = model(tmp_path, kernel="stock-6.1")
    assert s.status().kernel == "model:stock-6.1"
    s.close()


# --- permissions ------------------------------------------------------------------------------


def test_eperm_without_cap_sys_boot(tmp_path: Path) -> None:
    b = model(tmp_path, cap_sys_boot=False)
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, [seg(0x100000, b"a")], 0)
    assert exc.value.errno == errno.EPERM and "CAP_SYS_BOOT" in exc.value.hint
    assert errno_of(b.reboot_kexec) == errno.EPERM
    assert errno_of(b.kexec_file_load, -1, -1, None, 0) == errno.EPERM
    st = b.status()
    assert st.cap_sys_boot is False and st.problems and st.loaded is False


def test_eperm_from_the_roots_capabilities_and_sysctl(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r1", cap_sys_boot=False)
    b = ModelBackend(root)
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, [seg(0x100000, b"a")], 0)
    assert exc.value.errno == errno.EPERM and "CapEff" in exc.value.hint
    root = make_root(tmp_path / "r2", load_disabled=1)
    b = ModelBackend(root)
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, [seg(0x100000, b"a")], 0)
    assert "kexec_load_disabled" in exc.value.hint
    assert b.status().load_disabled is True


def test_the_error_names_the_call_like_the_linux_backend(tmp_path: Path) -> None:
    b = model(tmp_path)
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0x1000, [Segment(0x100008, P, 0, None)], 0)
    assert str(exc.value) == ("kexec_load(entry=0x1000, nr_segments=1, segments=[{0x100008+"
                              "0x1000, bufsz 0x0}], flags=0x3e0000) = -1 EADDRNOTAVAIL "
                              "(Cannot assign requested address)")
    assert "not page aligned" in exc.value.hint


# --- the kernel's segment rules -----------------------------------------------------------------


@pytest.mark.parametrize(("segs", "flags", "err"), [
    ([Segment(0x100000 + i * P, P, 0, None) for i in range(17)], 0, errno.EINVAL),
    ([Segment(0x100800, P, 0, None)], 0, errno.EADDRNOTAVAIL),
    ([Segment(0x100000, 0x800, 0, None)], 0, errno.EADDRNOTAVAIL),
    ([Segment(0x100000, 2 * P, 0, None), Segment(0x101000, P, 0, None)], 0, errno.EINVAL),
    ([Segment(0x100000, P, P + 1, bytes(P + 1))], 0, errno.EINVAL),
    ([Segment(0x100000, 0x10000000, 0, None)], 0, errno.EINVAL),  # half of 511 MiB
    ([Segment((1 << 46) - P, P, 0, None)], 0, errno.EADDRNOTAVAIL),
    ([Segment(0x100000, P, 4, None)], 0, errno.EFAULT),
    ([Segment(0x100000, P, 0, None)], abi.KEXEC_ARCH_AARCH64, errno.EINVAL),
    ([Segment(0x100000, P, 0, None)], 0x20, errno.EINVAL),
    ([Segment(0x100000, P, 0, None)], abi.KEXEC_ON_CRASH, errno.EADDRNOTAVAIL),
])
def test_segment_rules(tmp_path: Path, segs: list[Segment], flags: int, err: int) -> None:
    b = ModelBackend(NOWHERE, persist=False)
    assert errno_of(b.kexec_load, 0x100000, segs, flags) == err
    assert b.status().loaded is False and b.kernel.free_pages() == b.kernel.pool.n


def test_staged_loads_lift_the_half_of_ram_limit() -> None:
    b = ModelBackend(NOWHERE, persist=False,
                     config=ModelConfig(regions=pc_layout(64 << 20), collide=0.0))
    half = b.kernel.pool.n // 2
    big = Segment(0x100000, half * P, 0, None)
    b.kexec_load(0, [big], stage_flags(Stage.START))
    b.kexec_load(0, [Segment(0x100000 + half * P, (half // 2) * P, 0, None)],
                 stage_flags(Stage.FINAL))
    assert len(b.image("kexec").map) == half + half // 2  # type: ignore[union-attr]


def test_preserve_context_must_not_change_between_stages() -> None:
    b = ModelBackend(NOWHERE, persist=False)
    b.kexec_load(0, [seg(0x100000, b"x")], stage_flags(Stage.START) | abi.KEXEC_PRESERVE_CONTEXT)
    with pytest.raises(SyscallError, match="EINVAL") as exc:
        b.kexec_load(0, [seg(0x200000, b"y")], stage_flags(Stage.FINAL))
    assert "KEXEC_PRESERVE_CONTEXT differs" in exc.value.hint
    assert b.status().staging is None and b.status().loaded is False  # the load was dropped


def test_stage_order_messages() -> None:
    b = ModelBackend(NOWHERE, persist=False)
    s = [seg(0x100000, b"x")]
    with pytest.raises(SyscallError, match="EINVAL") as exc:
        b.kexec_load(0, s, stage_flags(Stage.MID))
    assert "no staged load is in progress" in exc.value.hint
    b.kexec_load(0, s, stage_flags(Stage.FULL))
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, s, stage_flags(Stage.FINAL))
    assert "loaded with KS_full" in exc.value.hint and b.status().loaded is True
    old = b.image("kexec")
    b.kexec_load(0, s, stage_flags(Stage.START))
    # as in kernel/patches 0003: the image loaded before stays loaded and
    # executable until KS_final replaces it; the staged load is kept apart
    st = b.status()
    assert st.loaded is True and st.staging is not None and b.image("kexec") is old
    b.kexec_load(0, [], stage_flags(Stage.FINAL))  # KS_final with no segments finishes
    assert b.image("kexec") is not old and b.status().staging is None
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, s, stage_flags(Stage.MID))
    assert "finished by KS_final" in exc.value.hint
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, s, stage_flags(Stage.START) | abi.KEXEC_ON_CRASH)
    assert "crash" in exc.value.hint


def test_pgmap_text_and_enodev() -> None:
    b = ModelBackend(NOWHERE, persist=False,
                     config=ModelConfig(regions=pc_layout(8 << 20), seed=2, collide=0.0))
    with pytest.raises(KexecError, match="ENODEV"):
        b.pgmap()
    b.write_phys(0x100000, bytes(4 * P))  # in use: these destinations cannot be in place
    b.kexec_load(0, [seg(0x100000, b"a", 4)], 0)
    pm = b.pgmap()
    assert len(pm) == 4 and list(pm.dst) == [0x100, 0x101, 0x102, 0x103]
    text = procfs.format_pgmap(pm.pairs())
    assert all(len(line) == 37 and line[18] == "\t" for line in text.splitlines())
    assert procfs.parse_pgmap(text.encode()).pairs() == pm.pairs()


def test_write_phys_guards_image_pages_and_non_ram() -> None:
    b = ModelBackend(NOWHERE, persist=False,
                     config=ModelConfig(regions=pc_layout(8 << 20), collide=0.0))
    b.write_phys(0x100000, bytes(P))
    b.kexec_load(0, [seg(0x100000, b"a")], 0)
    src = b.pgmap().pairs()[0][1]
    with pytest.raises(KexecError, match="kexec image"):
        b.write_phys(src * P, b"x")
    free = b.kernel.free_pages()
    before = [p for p in range(src - 8, src) if p not in b.kernel.level.owner]
    assert before  # free pages right below the source page ...
    with pytest.raises(KexecError, match="kexec image"):
        b.write_phys((src - 8) * P, bytes(9 * P))
    assert b.kernel.free_pages() == free  # ... stay free when the write is refused
    with pytest.raises(KexecError, match="not inside one RAM range"):
        b.write_phys(0xA0000, b"x")
    with pytest.raises(KexecError, match="not inside one RAM range"):
        b.write_phys(0x9E000, bytes(3 * P))


def test_destinations_outside_memory_are_lost_on_exec() -> None:
    b = ModelBackend(NOWHERE, persist=False,
                     config=ModelConfig(regions=pc_layout(8 << 20)))
    b.kexec_load(0x100000, [seg(0x100000, b"ok"), seg(0x40000000, b"gone")], 0)
    b.reboot_kexec()
    jump = b.last_jump
    assert jump is not None and jump.lost_bytes == P
    assert b.read_phys(0x100000, 2) == b"ok" and b.read_phys(0x40000000, 4) == bytes(4)


def test_jump_back_needs_a_jump() -> None:
    b = ModelBackend(NOWHERE, persist=False)
    assert errno_of(b.jump_back) == errno.EINVAL
    assert errno_of(b.reboot_kexec) == errno.EINVAL


def test_copy_contents_off_tracks_pages_only() -> None:
    b = ModelBackend(NOWHERE, persist=False, copy_contents=False)
    b.kexec_load(0x100000, [seg(0x100000, b"data", 4)], abi.KEXEC_PRESERVE_CONTEXT)
    assert len(b.image("kexec").map) == 4  # type: ignore[union-attr]
    b.reboot_kexec()
    assert b.read_phys(0x100000, 4) == bytes(4)
    assert b.running()["depth"] == 1


# --- crash images -------------------------------------------------------------------------------


def crash_model() -> ModelBackend:
    regions = with_crash_region(pc_layout(256 << 20), 0x8000000, 0x2000000)
    return ModelBackend(NOWHERE, persist=False, config=ModelConfig(regions=regions))


def test_crash_image_is_copied_into_the_crash_region() -> None:
    b = crash_model()
    b.kexec_load(0x8000000, [seg(0x8000000, b"crash", 2)], abi.KEXEC_ON_CRASH)
    assert b.read_phys(0x8000000, 5) == b"crash"  # loaded in place at once
    st = b.status()
    assert st.crash_loaded is True and st.loaded is False and st.crash_size == 0x2000000
    assert b.kernel.free_pages() == b.kernel.pool.n  # no pages from the pool
    assert errno_of(b.kexec_load, 0x8000000, [seg(0xA000000, b"x")],
                    abi.KEXEC_ON_CRASH) == errno.EADDRNOTAVAIL
    assert b.status().crash_loaded is False  # 6.1 frees the old crash image first
    assert errno_of(b.kexec_load, 0x100000, [seg(0x8000000, b"x")],
                    abi.KEXEC_ON_CRASH) == errno.EADDRNOTAVAIL  # entry outside
    b.kexec_load(0x8000000, [seg(0x8000000, b"crash")], abi.KEXEC_ON_CRASH)
    b.kexec_load(0, [], abi.KEXEC_ON_CRASH)
    assert b.status().crash_loaded is False


# --- kexec_file_load ----------------------------------------------------------------------


def open_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY)


def file_load(b: ModelBackend, kernel: bytes, tmp: Path, initrd: bytes | None = None,
              cmdline: bytes | None = b"console=ttyS0 quiet", flags: int = 0) -> None:
    (tmp / "k").write_bytes(kernel)
    kfd = open_fd(tmp / "k")
    ifd = -1
    if initrd is not None:
        (tmp / "i").write_bytes(initrd)
        ifd = open_fd(tmp / "i")
    else:
        flags |= abi.KEXEC_FILE_NO_INITRAMFS
    try:
        b.kexec_file_load(kfd, ifd, cmdline, flags)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def test_file_load_places_what_the_kernel_would(tmp_path: Path) -> None:
    b = ModelBackend(NOWHERE, persist=False)
    kernel = make_bzimage()
    file_load(b, kernel, tmp_path, initrd=b"INITRD" * 1000)
    img = b.image("kexec")
    assert img is not None and img.kind == "kexec_file_load" and img.file is not None
    names = img.file
    segs = img.segments()
    assert [s[0] for s in segs] == [names["purgatory"], names["boot_params"], names["kernel"],
                                    names["initrd"]]
    assert img.entry == names["purgatory"]
    # top-down: the initrd and the kernel at the top of RAM, above 16 MiB and 1 MiB
    assert names["kernel"] % 0x200000 == 0 and names["kernel"] >= 0x100000
    assert segs[2][1] == 0x400000 and segs[2][2] == len(kernel) - 5 * 512
    assert names["initrd"] >= 0x1000000
    assert max(s[0] + s[1] for s in segs) <= 0x20000000
    b.reboot_kexec()
    bp = names["boot_params"]
    assert b.read_phys(bp + 0x202, 4) == b"HdrS"
    assert b.read_phys(bp + 0x210, 1) == b"\xd0"
    ptr, = struct.unpack("<I", b.read_phys(bp + 0x228, 4))
    assert b.read_phys(ptr, 20) == b"console=ttyS0 quiet\0"
    rd, rdsz = struct.unpack("<II", b.read_phys(bp + 0x218, 8))
    assert (rd, rdsz) == (names["initrd"], 6000)
    assert b.read_phys(names["kernel"], 4) == bytes([0, 1, 2, 3])
    rip, rsi = struct.unpack("<QQ", b.read_phys(names["purgatory"] + 16, 16))
    assert (rip, rsi) == (names["kernel"] + 0x200, bp)
    jump = b.last_jump
    assert jump is not None and jump.cmdline == "console=ttyS0 quiet" and jump.boot_params == bp
    assert b.cmdline() == "console=ttyS0 quiet"


@pytest.mark.parametrize(("kernel", "why"), [
    (make_bzimage(truncate=1000), "too short"),
    (make_bzimage(magic=b"HdrX"), "HdrS"),
    (make_bzimage(boot_flag=0x1234), "boot sector"),
    (make_bzimage(version=0x020B), "2.12"),
    (make_bzimage(loadflags=0), "LOADED_HIGH"),
    (make_bzimage(xloadflags=0x2), "XLF_KERNEL_64"),
    (make_bzimage(xloadflags=0x1), "ABOVE_4G"),
    (make_bzimage(truncate=2000), "truncated"),
])
def test_file_load_enoexec(tmp_path: Path, kernel: bytes, why: str) -> None:
    b = ModelBackend(NOWHERE, persist=False)
    with pytest.raises(SyscallError) as exc:
        file_load(b, kernel, tmp_path)
    assert exc.value.errno == errno.ENOEXEC and why in exc.value.hint
    assert b.status().loaded is False


def test_file_load_errors(tmp_path: Path) -> None:
    b = ModelBackend(NOWHERE, persist=False)
    with pytest.raises(SyscallError) as exc:
        file_load(b, make_bzimage(cmdline_size=40), tmp_path, cmdline=b"x" * 40)
    assert exc.value.errno == errno.EINVAL and "too long" in exc.value.hint
    with pytest.raises(SyscallError) as exc:
        file_load(b, make_bzimage(cmdline_size=40), tmp_path, cmdline=b"x" * 20)
    assert exc.value.errno == errno.EINVAL and "elfcorehdr" in exc.value.hint
    assert errno_of(b.kexec_file_load, -1, -1, None, abi.KEXEC_FILE_NO_INITRAMFS) == errno.EBADF
    (tmp_path / "k").write_bytes(make_bzimage())
    fd = open_fd(tmp_path / "k")
    try:
        assert errno_of(b.kexec_file_load, fd, -1, None, 0) == errno.EBADF  # initrd fd
        assert errno_of(b.kexec_file_load, fd, -1, None, 0x8) == errno.EINVAL
    finally:
        os.close(fd)
    with pytest.raises(SyscallError) as exc:
        file_load(b, make_bzimage(init_size=0x1000), tmp_path)
    assert exc.value.errno == errno.EINVAL  # init_size below the payload: bufsz > memsz
    assert b.status().loaded is False
    file_load(b, make_bzimage(), tmp_path)
    assert b.status().loaded is True
    b.kexec_file_load(-1, -1, None, abi.KEXEC_FILE_UNLOAD)
    assert b.status().loaded is False


def test_file_load_crash_kernel(tmp_path: Path) -> None:
    b = crash_model()
    file_load(b, make_bzimage(), tmp_path, flags=abi.KEXEC_FILE_ON_CRASH)
    img = b.image("crash")
    assert img is not None and all(0x8000000 <= m and m + sz <= 0xA000000
                                   for m, sz, _ in img.segments())
    plain = ModelBackend(NOWHERE, persist=False)
    with pytest.raises(SyscallError) as exc:
        file_load(plain, make_bzimage(), tmp_path, flags=abi.KEXEC_FILE_ON_CRASH)
    assert exc.value.errno == errno.EADDRNOTAVAIL


# --- dump-memory ---------------------------------------------------------------------------


def test_dump_memory_is_an_elf_core_of_ram(tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    b = ModelBackend(NOWHERE, persist=False,
                     config=ModelConfig(regions=pc_layout(16 << 20)))
    b.write_phys(0x5000, b"low")
    b.write_phys(0x200000, b"high" * 2000)
    b.kexec_load(0x300000, [seg(0x300000, b"image", 2)], 0)
    b.reboot_kexec()
    out = tmp_path / "mem.elf"
    info = b.dump_memory(out)
    assert info["loads"] == 2 and info["file_size"] == out.stat().st_size
    assert out.stat().st_blocks * 512 < 1 << 20  # sparse: 16 MiB of RAM, little data
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert [(s["p_paddr"], s["p_memsz"]) for s in loads] == [
            (0x1000, 0x9E000), (0x100000, 0xF00000)]
        low, high = loads
        assert low.data()[0x4000:0x4003] == b"low"
        assert high.data()[0x100000:0x100000 + 8000] == b"high" * 2000
        assert high.data()[0x200000:0x200005] == b"image"
        notes = [n for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"
                 for n in s.iter_notes()]
        assert notes[0]["n_name"] == "KPY-MODEL"
