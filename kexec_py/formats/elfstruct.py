"""The ELF structures kexec-py reads and writes by hand, declared once.

Every module that touches ELF bytes without pyelftools takes its layouts
from here: the readers of cores (:mod:`~kexec_py.formats.vmcore`, the
hibernating kernel's ``/proc/vmcore`` in :mod:`kexec_py.hibernate.core`), the
writers (:mod:`~kexec_py.formats.corewriter`, the backup map's
elfcorehdr in :mod:`kexec_py.hibernate.window`) and the program-header pass of
:mod:`~kexec_py.formats.elf`.

pyelftools is used only in :mod:`~kexec_py.formats.elf`, to read and check
the ELF header of kernels.  The program-header tables are read by hand
because images have 100,000 program headers and more: pyelftools'
``iter_segments()`` costs ~0.9 s for 100,000, one ``struct`` or ``array``
pass over the table ~0.1 s or less (bench/bench_resume.py).

What is here (include/uapi/linux/elf.h, the ELF gABI):

- constants: ``e_ident`` (:data:`ELFMAG`, ``EI_*``, ``ELFCLASS*``,
  ``ELFDATA*``, :data:`EV_CURRENT`), ``ET_*``, ``EM_*``, ``PT_*``,
  ``PF_*``, :data:`SHT_NULL` and :data:`PN_XNUM`;
- :class:`ElfStruct`: one structure in one class and byte order -- a
  :class:`struct.Struct` over all its fields (``pack``, ``pack_into``,
  ``unpack_from``, ``iter_unpack``) with the fields' names, offsets and
  struct codes, and by-name access to single fields (:meth:`ElfStruct.get`,
  :meth:`ElfStruct.put`, :meth:`ElfStruct.pack_fields`);
- :class:`ElfLayout`: ``ehdr``, ``phdr``, ``shdr`` (only section 0 is ever
  used: ``sh_info`` holds ``e_phnum`` past :data:`PN_XNUM`) and ``nhdr`` of
  one class and byte order, with ``e_ident`` and the ELF header of a core
  file (:meth:`ElfLayout.core_ehdr`, for both core writers);
  :data:`LAYOUTS` keyed by ``(ELFCLASS*, little)``, :func:`layout`, and
  :data:`ELF64LE`, the one layout kexec-py writes.

Fields keep their ELF names (``e_phnum``, ``p_offset``, ``sh_info``,
``n_namesz``) and their spec order, which differs between classes only in
the program header: ``Elf64_Phdr`` puts ``p_flags`` second, ``Elf32_Phdr``
seventh.  Notes themselves (encoding, walking) are in
:mod:`~kexec_py.formats.notes`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: what the readers take (kexec_py.segments.Buffer; not imported, so that this
#: module depends on nothing of kexec-py's)
Buffer = bytes | bytearray | memoryview

# --- e_ident --------------------------------------------------------------------------

ELFMAG = b"\x7fELF"
EI_CLASS, EI_DATA, EI_VERSION, EI_OSABI, EI_NIDENT = 4, 5, 6, 7, 16
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
ELFOSABI_SYSV = 0

# --- the ELF header, program headers, section headers -------------------------------

ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = 0, 1, 2, 3, 4
ET_NAMES = {ET_NONE: "ET_NONE", ET_REL: "ET_REL", ET_EXEC: "ET_EXEC", ET_DYN: "ET_DYN",
            ET_CORE: "ET_CORE"}
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 0, 1, 2, 3, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NULL = 0
#: e_phnum of a file with 65535 or more program headers: the real count is
#: in section header 0's sh_info (gABI, "Extended numbering")
PN_XNUM = 0xFFFF

# --- the declarations ----------------------------------------------------------------

#: ELF's type names -> struct codes, per class (Elf32_Addr is 4 bytes, Elf64_Addr 8)
_TYPES = {
    ELFCLASS32: {"ident": f"{EI_NIDENT}s", "Half": "H", "Word": "I", "Addr": "I", "Off": "I",
                 "Xword": "I"},
    ELFCLASS64: {"ident": f"{EI_NIDENT}s", "Half": "H", "Word": "I", "Addr": "Q", "Off": "Q",
                 "Xword": "Q"},
}

#: Elf{32,64}_Ehdr: the same fields in both classes
_EHDR = (("e_ident", "ident"), ("e_type", "Half"), ("e_machine", "Half"),
         ("e_version", "Word"), ("e_entry", "Addr"), ("e_phoff", "Off"), ("e_shoff", "Off"),
         ("e_flags", "Word"), ("e_ehsize", "Half"), ("e_phentsize", "Half"),
         ("e_phnum", "Half"), ("e_shentsize", "Half"), ("e_shnum", "Half"),
         ("e_shstrndx", "Half"))
#: Elf64_Phdr: p_flags second, so that the 64-bit fields are aligned
_PHDR64 = (("p_type", "Word"), ("p_flags", "Word"), ("p_offset", "Off"), ("p_vaddr", "Addr"),
           ("p_paddr", "Addr"), ("p_filesz", "Xword"), ("p_memsz", "Xword"),
           ("p_align", "Xword"))
#: Elf32_Phdr: p_flags seventh
_PHDR32 = (("p_type", "Word"), ("p_offset", "Off"), ("p_vaddr", "Addr"), ("p_paddr", "Addr"),
           ("p_filesz", "Word"), ("p_memsz", "Word"), ("p_flags", "Word"), ("p_align", "Word"))
#: Elf{32,64}_Shdr
_SHDR = (("sh_name", "Word"), ("sh_type", "Word"), ("sh_flags", "Xword"), ("sh_addr", "Addr"),
         ("sh_offset", "Off"), ("sh_size", "Xword"), ("sh_link", "Word"), ("sh_info", "Word"),
         ("sh_addralign", "Xword"), ("sh_entsize", "Xword"))
#: Elf32_Nhdr and Elf64_Nhdr are both three u32
_NHDR = (("n_namesz", "Word"), ("n_descsz", "Word"), ("n_type", "Word"))


class ElfStruct:
    """One ELF structure in one class and byte order.

    ``pack``, ``pack_into``, ``unpack_from`` and ``iter_unpack`` are those
    of a :class:`struct.Struct` over every field in ``fields`` order (no
    padding: ELF structures have none).  ``name`` is the C name
    (``Elf64_Phdr``), ``size`` the size in bytes, ``endian`` ``"<"`` or
    ``">"``.
    """

    __slots__ = ("name", "endian", "fields", "size", "pack", "pack_into", "unpack_from",
                 "iter_unpack", "_offset", "_code", "_one")

    name: str
    endian: str
    fields: tuple[str, ...]
    size: int
    pack: Callable[..., bytes]
    pack_into: Callable[..., None]
    unpack_from: Callable[..., tuple[Any, ...]]
    iter_unpack: Callable[[Buffer], Iterator[tuple[Any, ...]]]

    def __init__(self, name: str, endian: str, fields: Sequence[tuple[str, str]]) -> None:
        whole = struct.Struct(endian + "".join(code for _, code in fields))
        self.name = name
        self.endian = endian
        self.fields = tuple(f for f, _ in fields)
        self.size = whole.size
        self.pack = whole.pack
        self.pack_into = whole.pack_into
        self.unpack_from = whole.unpack_from
        self.iter_unpack = whole.iter_unpack
        self._offset: dict[str, int] = {}
        self._code: dict[str, str] = {}
        self._one: dict[str, struct.Struct] = {}
        pos = 0
        for f, code in fields:
            self._offset[f] = pos
            self._code[f] = code
            self._one[f] = struct.Struct(endian + code)
            pos += self._one[f].size

    def __repr__(self) -> str:
        return f"<ElfStruct {self.name} {self.endian} {self.size} bytes>"

    def offset(self, field: str) -> int:
        """Where ``field`` starts, from the start of the structure."""
        return self._offset[field]

    def end(self, field: str) -> int:
        """Where ``field`` ends (the offset just past it)."""
        return self._offset[field] + self._one[field].size

    def code(self, field: str) -> str:
        """The struct code of ``field``: ``"H"``, ``"I"``, ``"Q"`` or ``"16s"``."""
        return self._code[field]

    def index(self, field: str) -> int:
        """The position of ``field`` in what ``unpack_from`` returns."""
        return self.fields.index(field)

    def get(self, buf: Buffer, field: str, at: int = 0) -> Any:
        """The value of ``field`` of the structure at offset ``at`` of ``buf``."""
        return self._one[field].unpack_from(buf, at + self._offset[field])[0]

    def put(self, buf: bytearray | memoryview, field: str, value: Any, at: int = 0) -> None:
        """Store ``value`` in ``field`` of the structure at offset ``at`` of ``buf``."""
        self._one[field].pack_into(buf, at + self._offset[field], value)

    def pack_fields(self, **values: Any) -> bytes:
        """The structure with the fields given by name; every other field 0."""
        unknown = set(values) - set(self.fields)
        if unknown:
            raise TypeError(f"{self.name} has no field {', '.join(sorted(unknown))}")
        return self.pack(*(values.get(f, b"" if self._code[f].endswith("s") else 0)
                           for f in self.fields))

    def as_dict(self, buf: Buffer, at: int = 0) -> dict[str, Any]:
        """Every field of the structure at offset ``at`` of ``buf``, by name."""
        return dict(zip(self.fields, self.unpack_from(buf, at), strict=True))


@dataclass(frozen=True, eq=False)
class ElfLayout:
    """The hand-read ELF structures of one class and byte order."""

    elfclass: int
    little: bool
    ehdr: ElfStruct
    phdr: ElfStruct
    shdr: ElfStruct
    nhdr: ElfStruct

    @property
    def bits(self) -> int:
        return 64 if self.elfclass == ELFCLASS64 else 32

    @property
    def endian(self) -> str:
        return "<" if self.little else ">"

    def ident(self, osabi: int = ELFOSABI_SYSV) -> bytes:
        """``e_ident`` of a file of this layout: magic, class, data encoding,
        ``EV_CURRENT``, OS ABI, zero padding."""
        data = ELFDATA2LSB if self.little else ELFDATA2MSB
        return ELFMAG + bytes([self.elfclass, data, EV_CURRENT, osabi]) + bytes(EI_NIDENT - 8)

    def core_ehdr(self, machine: int, phnum: int) -> bytes:
        """The ELF header of a core file (``ET_CORE``) of this layout whose
        ``phnum`` program headers follow it.  From :data:`PN_XNUM` on, the
        count is section header 0's ``sh_info`` and that header follows the
        program headers (the writer writes it: ``sh_info = phnum``)."""
        eh, ph = self.ehdr, self.phdr
        xnum = phnum >= PN_XNUM
        return eh.pack(self.ident(), ET_CORE, machine, EV_CURRENT, 0, eh.size,
                       eh.size + ph.size * phnum if xnum else 0, 0, eh.size, ph.size,
                       PN_XNUM if xnum else phnum, self.shdr.size if xnum else 0,
                       1 if xnum else 0, 0)


def _make(elfclass: int, little: bool) -> ElfLayout:
    bits = 64 if elfclass == ELFCLASS64 else 32
    e = "<" if little else ">"
    types = _TYPES[elfclass]

    def decl(name: str, fields: Sequence[tuple[str, str]]) -> ElfStruct:
        return ElfStruct(f"Elf{bits}_{name}", e, [(f, types[t]) for f, t in fields])

    return ElfLayout(elfclass, little, decl("Ehdr", _EHDR),
                     decl("Phdr", _PHDR64 if elfclass == ELFCLASS64 else _PHDR32),
                     decl("Shdr", _SHDR), decl("Nhdr", _NHDR))


#: every layout, by ``(EI_CLASS, little-endian)``
LAYOUTS: dict[tuple[int, bool], ElfLayout] = {
    (c, little): _make(c, little) for c in (ELFCLASS32, ELFCLASS64) for little in (True, False)
}
#: ELF64 little-endian: what kexec-py writes (cores, elfcorehdrs)
ELF64LE = LAYOUTS[(ELFCLASS64, True)]


def layout(elfclass: int, little: bool) -> ElfLayout:
    """The layout of ``elfclass`` (``ELFCLASS32`` or ``ELFCLASS64``) in one
    byte order; KeyError for any other class."""
    return LAYOUTS[(elfclass, little)]


def layout_named_by(ident: Buffer) -> ElfLayout:
    """The layout ``e_ident`` names, before anything is validated: a class
    other than ELFCLASS64 reads as ELF32 and a byte order other than
    ELFDATA2MSB as little-endian, so that a reader can fetch the header and
    let its parser say what is wrong.  ``ident``: at least EI_DATA + 1
    bytes."""
    return LAYOUTS[(ELFCLASS64 if ident[EI_CLASS] == ELFCLASS64 else ELFCLASS32,
                    ident[EI_DATA] != ELFDATA2MSB)]
