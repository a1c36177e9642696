"""Synthesize x86 bzImages and ELF kernels for tests (struct-packed; broken
on purpose when asked).  Not product code."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

HDR_OFFSETS = {  # name: (offset, struct format)
    "setup_sects": (0x1F1, "<B"), "syssize": (0x1F4, "<I"), "vid_mode": (0x1FA, "<H"),
    "boot_flag": (0x1FE, "<H"), "version": (0x206, "<H"), "kernel_version": (0x20E, "<H"),
    "loadflags": (0x211, "<B"), "initrd_addr_max": (0x22C, "<I"),
    "kernel_alignment": (0x230, "<I"), "relocatable_kernel": (0x234, "<B"),
    "min_alignment": (0x235, "<B"), "xloadflags": (0x236, "<H"), "cmdline_size": (0x238, "<I"),
    "payload_offset": (0x248, "<I"), "payload_length": (0x24C, "<I"),
    "pref_address": (0x258, "<Q"), "init_size": (0x260, "<I"),
}


def make_bzimage(*, version: int = 0x020F, setup_sects: int = 4, payload_size: int = 0x9000,
                 init_size: int = 0x400000, kernel_alignment: int = 0x200000,
                 relocatable: int = 1, xloadflags: int = 0x3, loadflags: int = 0x1,
                 pref_address: int = 0x1000000, cmdline_size: int = 2047,
                 magic: bytes = b"HdrS", boot_flag: int = 0xAA55, syssize: int | None = None,
                 version_string: bytes = b"6.1.0-kexec-py-test (test@example) #1",
                 truncate: int | None = None) -> bytes:
    """A bzImage whose header says what the arguments say.  The payload is
    a recognizable pattern (byte i of the payload is i & 0xff)."""
    setup = (setup_sects or 4) + 1
    data = bytearray(setup * 512 + payload_size)
    end = {0x020F: 0x26C}.get(version, 0x268 if version >= 0x020A else 0x230)
    data[0x200] = 0xEB
    data[0x201] = end - 0x202
    data[0x202:0x206] = magic
    vals = {"setup_sects": setup_sects, "syssize": (payload_size // 16 if syssize is None
                                                   else syssize),
            "vid_mode": 0xFFFF, "boot_flag": boot_flag, "version": version,
            "kernel_version": 0x400, "loadflags": loadflags, "initrd_addr_max": 0x7FFFFFFF,
            "kernel_alignment": kernel_alignment, "relocatable_kernel": relocatable,
            "min_alignment": 21, "xloadflags": xloadflags, "cmdline_size": cmdline_size,
            "payload_offset": 0x100, "payload_length": payload_size - 0x200,
            "pref_address": pref_address, "init_size": init_size}
    for name, value in vals.items():
        off, fmt = HDR_OFFSETS[name]
        if off + struct.calcsize(fmt) <= end or off < 0x202:
            struct.pack_into(fmt, data, off, value)
    data[0x600:0x600 + len(version_string) + 1] = version_string + b"\0"
    base = setup * 512
    data[base:] = bytes(i & 0xFF for i in range(payload_size))
    if truncate is not None:
        del data[truncate:]
    return bytes(data)


@dataclass
class Load:
    paddr: int
    filesz: int
    memsz: int
    offset: int | None = None  # default: placed after the previous one, 4 KiB aligned
    vaddr: int | None = None
    fill: int = 0xAB
    flags: int = 7


@dataclass
class ElfSpec:
    loads: list[Load] = field(default_factory=list)
    bits: int = 64
    little: bool = True
    e_type: int = 2  # ET_EXEC
    machine: int = 62  # EM_X86_64
    entry: int = 0x1000000
    notes: int = 0  # number of PT_NOTE headers (empty)
    xnum: bool = False  # e_phnum = PN_XNUM, the count in section 0's sh_info


def make_elf(spec: ElfSpec) -> bytes:
    """An ELF file with the given PT_LOADs; data of PT_LOAD k is byte
    ``fill`` repeated, except its first 8 bytes hold the paddr (LE u64)."""
    e = "<" if spec.little else ">"
    ehsize, phsize = (64, 56) if spec.bits == 64 else (52, 32)
    phnum = len(spec.loads) + spec.notes
    off = max(0x1000, ehsize + phnum * phsize)
    off = (off + 0xFFF) & ~0xFFF
    phdrs = []
    blobs: list[tuple[int, bytes]] = []
    for ld in spec.loads:
        o = off if ld.offset is None else ld.offset
        body = bytearray([ld.fill]) * ld.filesz
        body[:8] = struct.pack("<Q", ld.paddr)[:min(8, ld.filesz)]
        blobs.append((o, bytes(body)))
        va = ld.vaddr if ld.vaddr is not None else ld.paddr + 0xFFFFFFFF80000000 \
            if spec.bits == 64 else ld.paddr
        phdrs.append((1, ld.flags, o, va, ld.paddr, ld.filesz, ld.memsz, 0x1000))
        off = (max(off, o + ld.filesz) + 0xFFF) & ~0xFFF
    for _ in range(spec.notes):
        phdrs.append((4, 4, 0, 0, 0, 0, 0, 4))
    size = max([o + len(b) for o, b in blobs] + [ehsize + phnum * phsize])
    shentsize = 64 if spec.bits == 64 else 40
    shoff = (size + 7) & ~7 if spec.xnum else 0
    if spec.xnum:
        size = shoff + shentsize
    out = bytearray(size)
    ident = b"\x7fELF" + bytes([2 if spec.bits == 64 else 1, 1 if spec.little else 2, 1])
    out[:len(ident)] = ident
    e_phnum, e_shnum = (0xFFFF, 1) if spec.xnum else (phnum, 0)
    if spec.bits == 64:
        struct.pack_into(e + "HHIQQQIHHHHHH", out, 16, spec.e_type, spec.machine, 1,
                         spec.entry, ehsize, shoff, 0, ehsize, phsize, e_phnum, 64, e_shnum, 0)
    else:
        struct.pack_into(e + "HHIIIIIHHHHHH", out, 16, spec.e_type, spec.machine, 1,
                         spec.entry, ehsize, shoff, 0, ehsize, phsize, e_phnum, 40, e_shnum, 0)
    if spec.xnum:  # section 0: SHT_NULL with sh_info = the real program header count
        info_at = shoff + (44 if spec.bits == 64 else 28)
        struct.pack_into(e + "I", out, info_at, phnum)
    for i, (ptype, flags, o, va, pa, fsz, msz, align) in enumerate(phdrs):
        at = ehsize + i * phsize
        if spec.bits == 64:
            struct.pack_into(e + "IIQQQQQQ", out, at, ptype, flags, o, va, pa, fsz, msz, align)
        else:
            struct.pack_into(e + "IIIIIIII", out, at, ptype, o, va & 0xFFFFFFFF, pa, fsz, msz,
                             flags, align)
    for o, b in blobs:
        out[o:o + len(b)] = b
    return bytes(out)


def vmlinux_spec() -> ElfSpec:
    """The shape of Debian's 6.1 vmlinux, small: text, data, percpu (vaddr
    0), init+bss; physical entry at 16 MiB."""
    return ElfSpec(loads=[
        Load(0x1000000, 0x3000, 0x3000, vaddr=0xFFFFFFFF81000000, flags=5),
        Load(0x1200000, 0x2000, 0x2000, vaddr=0xFFFFFFFF81200000, flags=6),
        Load(0x1202000, 0x1000, 0x1000, vaddr=0, flags=6),
        Load(0x1203000, 0x1000, 0x5000, vaddr=0xFFFFFFFF81203000, flags=7),
    ])


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def iomem_for(memmap: list[tuple[int, int, str]]) -> str:
    """/proc/iomem text with the same top-level regions as a firmware map
    (inclusive ends) and no crash kernel."""
    return "".join(f"{s:08x}-{e:08x} : {k}\n" for s, e, k in memmap)
