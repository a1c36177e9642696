"""Our x86_64 entry stub: the few instructions between kexec and a 64-bit kernel.

kexec-tools loads a "purgatory" (a relocatable ELF object, about 36 KiB of
code and stack) that checks a SHA-256 digest of the segments and then sets
up registers.  kexec-py loads this stub instead: position-independent
machine code, one page with its own stack, written here as a table of
instructions with their encodings.  It does **not** verify a digest of the
segments (kexec-tools' ``-i`` behaviour); the man page says so.

What the kernel hands over (``identity_mapped`` in
``arch/x86/kernel/relocate_kernel_64.S`` of 6.1, and checked in QEMU by
tests/vm/test_kexec_load.py, which boots kernels through this stub): 64-bit
long mode on an identity map of all RAM and every segment, interrupts off,
every general register zero, GDTR and IDTR invalid, ``rsp`` in the control
page.  With ``KEXEC_PRESERVE_CONTEXT`` the kernel enters with ``call``
instead of ``ret``, so ``(%rsp)`` holds the address to jump back to.

What the 64-bit boot protocol wants (Documentation/arch/x86/boot.rst,
"64-bit Boot Protocol"): long mode, a GDT with ``__BOOT_CS`` (0x10, 64-bit
code) and ``__BOOT_DS`` (0x18, data) loaded, ``rsi`` = boot_params,
interrupts off, entry at the 64-bit entry point (payload + 0x200 for a
bzImage, ``e_entry`` for a vmlinux).

The stub, in order: keeps interrupts off and clears the direction flag;
takes the return address from the stack (only meaningful for a kexec jump);
switches to a stack at the end of its own page; if asked, writes that
return address as 16 hex digits into the command line (the value of
``kexec_jump_back_entry=``, which a hibernation kernel reads from
/proc/cmdline); loads a four-entry GDT with a far return into ``__BOOT_CS``;
loads ``__BOOT_DS`` into every data segment register; sets ``rsi`` and
jumps.  Three 64-bit immediates are patched per load: ``BOOT_PARAMS``,
``KERNEL_ENTRY`` and ``JUMP_BACK_DIGITS`` (0: do not write).

:data:`SOURCE` is the program; :func:`assembly` prints it as GNU ``as``
input, and ``tests/test_purgatory.py`` assembles that text with binutils and
compares the bytes with :func:`build`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from kexec_py.boundary.abi import PAGE_SIZE

#: the GDT selectors of the boot protocol (arch/x86/include/asm/segment.h)
BOOT_CS = 0x10
BOOT_DS = 0x18
#: GDT descriptors: 64-bit code (L=1, P=1, DPL 0, execute/read) and
#: 32/64-bit data (P=1, DPL 0, read/write), both base 0 limit 4 GiB
GDT_CODE64 = 0x00AF9A000000FFFF
GDT_DATA = 0x00CF92000000FFFF
#: the stub and its stack take one page; the stack grows down from its end
STUB_PAGE = PAGE_SIZE
#: the patched immediates
PATCHES = ("BOOT_PARAMS", "KERNEL_ENTRY", "JUMP_BACK_DIGITS")


class Line(NamedTuple):
    """One line of the stub: an optional label, the instruction in AT&T
    syntax (GNU as), its encoding and what it is for.

    The encoding is a space-separated list of tokens: two hex digits are a
    byte; ``rel8:T`` / ``rel32:T`` a displacement to target ``T`` (a label,
    or ``entry+N``) from the end of the instruction; ``imm64:NAME`` a
    patched little-endian immediate; ``align:N`` zero padding to a multiple
    of N.
    """

    label: str
    asm: str
    encoding: str
    comment: str


SOURCE: tuple[Line, ...] = (
    Line("entry", "cli", "fa", "interrupts stay off (kexec left them off)"),
    Line("", "cld", "fc", "string instructions count upwards"),
    Line("", "movq (%rsp), %rdx", "48 8b 14 24",
         "return address: where a kexec jump (preserve context) goes back to"),
    Line("", "leaq entry+0x1000(%rip), %rsp", "48 8d 25 rel32:entry+0x1000",
         "our own stack: the end of the stub's page"),
    Line("", "movabsq $JUMP_BACK_DIGITS, %rdi", "48 bf imm64:JUMP_BACK_DIGITS",
         "16 hex digits to fill in the command line, or 0"),
    Line("", "testq %rdi, %rdi", "48 85 ff", "none asked for:"),
    Line("", "jz 2f", "74 rel8:2", "skip the digits"),
    Line("", "movl $16, %ecx", "b9 10 00 00 00", "16 nibbles"),
    Line("", "leaq hexdigits(%rip), %rbx", "48 8d 1d rel32:hexdigits", "digit table"),
    Line("1", "rolq $4, %rdx", "48 c1 c2 04", "next nibble, most significant first"),
    Line("", "movl %edx, %eax", "89 d0", "copy it out to mask"),
    Line("", "andl $15, %eax", "83 e0 0f", "the nibble"),
    Line("", "movb (%rbx,%rax), %al", "8a 04 03", "its digit"),
    Line("", "stosb", "aa", "*rdi++ = digit"),
    Line("", "decl %ecx", "ff c9", "one digit done"),
    Line("", "jnz 1b", "75 rel8:1", "until 16 digits are written"),
    Line("2", "leaq gdt(%rip), %rax", "48 8d 05 rel32:gdt", "GDT base"),
    Line("", "pushq %rax", "50", "GDTR pseudo-descriptor on the stack: base..."),
    Line("", "pushw $31", "66 6a 1f", "...and limit (4 descriptors - 1)"),
    Line("", "lgdt (%rsp)", "0f 01 14 24", "load our GDT"),
    Line("", "addq $10, %rsp", "48 83 c4 0a", "drop the pseudo-descriptor"),
    Line("", "leaq 3f(%rip), %rax", "48 8d 05 rel32:3", "where to continue"),
    Line("", "pushq $0x10", "6a 10", "far return frame: __BOOT_CS..."),
    Line("", "pushq %rax", "50", "...and the offset: label 3 below"),
    Line("", "lretq", "48 cb", "far return: CS = __BOOT_CS from our GDT"),
    Line("3", "movl $0x18, %eax", "b8 18 00 00 00", "__BOOT_DS"),
    # mov %eax, %sreg: 8e /r with mod=11, reg=sreg (es 0, ss 2, ds 3, fs 4, gs 5), rm=eax
    *(Line("", f"movl %eax, %{s}", f"8e {modrm:02x}", f"{s.upper()} = __BOOT_DS")
      for s, modrm in (("ds", 0xD8), ("es", 0xC0), ("ss", 0xD0), ("fs", 0xE0), ("gs", 0xE8))),
    Line("", "movabsq $BOOT_PARAMS, %rsi", "48 be imm64:BOOT_PARAMS",
         "boot protocol: rsi = struct boot_params"),
    Line("", "movabsq $KERNEL_ENTRY, %rax", "48 b8 imm64:KERNEL_ENTRY",
         "the 64-bit entry (bzImage payload + 0x200)"),
    Line("", "xorl %ebx, %ebx", "31 db", "rbx = 0: the boot CPU"),
    # xor %reg, %reg: 31 /r with mod=11, reg=rm=reg (ecx 1, edx 2, ebp 5, edi 7)
    *(Line("", f"xorl %{r}, %{r}", f"31 {modrm:02x}", why) for r, modrm, why in (
        ("ecx", 0xC9, "leave no stub state behind"),
        ("edx", 0xD2, "(rdx held the return address)"),
        ("edi", 0xFF, "(rdi pointed into the command line)"),
        ("ebp", 0xED, "no frame pointer chain"))),
    Line("", "jmpq *%rax", "ff e0", "into the kernel; no return"),
    Line("", ".balign 8, 0", "align:8", "descriptors on an 8-byte boundary"),
    Line("gdt", ".quad 0", "00 00 00 00 00 00 00 00", "null descriptor"),
    Line("", ".quad 0", "00 00 00 00 00 00 00 00", "0x08: unused"),
    Line("", f".quad {GDT_CODE64:#018x}", " ".join(f"{b:02x}" for b in
         GDT_CODE64.to_bytes(8, "little")), "0x10 __BOOT_CS: 64-bit code"),
    Line("", f".quad {GDT_DATA:#018x}", " ".join(f"{b:02x}" for b in
         GDT_DATA.to_bytes(8, "little")), "0x18 __BOOT_DS: data"),
    Line("hexdigits", '.ascii "0123456789abcdef"', " ".join(f"{b:02x}" for b in
         b"0123456789abcdef"), "digit table"),
)


def _token_size(tok: str, offset: int) -> int:
    kind = tok.split(":", 1)[0]
    if kind == "rel8":
        return 1
    if kind == "rel32":
        return 4
    if kind == "imm64":
        return 8
    if kind == "align":
        n = int(tok.split(":", 1)[1])
        return -offset % n
    return 1


def _layout() -> tuple[dict[str, int], list[tuple[int, int]]]:
    """Label offsets (numeric labels under their digit), and each line's
    ``(start, end)`` offsets."""
    labels: dict[str, int] = {}
    spans: list[tuple[int, int]] = []
    off = 0
    for line in SOURCE:
        if line.label:
            labels[line.label] = off
        start = off
        for tok in line.encoding.split():
            off += _token_size(tok, off)
        spans.append((start, off))
    return labels, spans


def _target(expr: str, labels: dict[str, int]) -> int:
    if "+" in expr:
        name, add = expr.split("+", 1)
        return labels[name] + int(add, 0)
    return labels[expr]


def build(boot_params: int, kernel_entry: int, jump_back_digits: int = 0) -> bytes:
    """The stub's bytes for one load (position independent: it may be
    loaded at any page).  ``jump_back_digits`` is the physical address of
    16 bytes in the command line that receive the kexec jump-back address,
    or 0."""
    values = {"BOOT_PARAMS": boot_params, "KERNEL_ENTRY": kernel_entry,
              "JUMP_BACK_DIGITS": jump_back_digits}
    labels, spans = _layout()
    out = bytearray()
    for line, (_, end) in zip(SOURCE, spans, strict=True):
        for tok in line.encoding.split():
            kind, _, arg = tok.partition(":")
            if kind == "rel8":
                d = _target(arg, labels) - end
                if not -128 <= d < 128:
                    raise ValueError(f"rel8 to {arg} out of range in {line.asm!r}")
                out += struct.pack("<b", d)
            elif kind == "rel32":
                out += struct.pack("<i", _target(arg, labels) - end)
            elif kind == "imm64":
                out += struct.pack("<Q", values[arg] & (2**64 - 1))
            elif kind == "align":
                out += bytes(_token_size(tok, len(out)))
            else:
                out.append(int(tok, 16))
    if len(out) > STUB_PAGE // 2:
        raise AssertionError("the stub outgrew half of its page")
    return bytes(out)


def patch_offsets() -> dict[str, int]:
    """Offset of each patched immediate in :func:`build`'s bytes."""
    labels, spans = _layout()
    found: dict[str, int] = {}
    for line, (start, _) in zip(SOURCE, spans, strict=True):
        off = start
        for tok in line.encoding.split():
            if tok.startswith("imm64:"):
                found[tok[6:]] = off
            off += _token_size(tok, off)
    return found


def assembly(boot_params: int = 0, kernel_entry: int = 0, jump_back_digits: int = 0) -> str:
    """:data:`SOURCE` as a GNU as (AT&T syntax) file, with the immediates
    set, so that ``as --64`` and ``objcopy -O binary -j .text`` reproduce
    :func:`build` byte for byte."""
    lines = [
        "# kexec-py entry stub (kexec_py/arch/x86/entry.py): assemble with",
        "#   as --64 -o stub.o stub.s && objcopy -O binary -j .text stub.o stub.bin",
        "        .code64",
        "        .text",
        f"        .set BOOT_PARAMS, {boot_params:#x}",
        f"        .set KERNEL_ENTRY, {kernel_entry:#x}",
        f"        .set JUMP_BACK_DIGITS, {jump_back_digits:#x}",
    ]
    for line in SOURCE:
        label = f"{line.label}:" if line.label else ""
        comment = f"  # {line.comment}" if line.comment else ""
        lines.append(f"{label:<11} {line.asm:<34}{comment}".rstrip())
    return "\n".join(lines) + "\n"
