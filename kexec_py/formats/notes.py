"""ELF notes: the one encoder and the one walker.

A note area (the contents of a ``PT_NOTE``) is a sequence of notes, each an
``Elf{32,64}_Nhdr`` (three u32, the same in both classes: ``n_namesz
n_descsz n_type``, see :mod:`~kexec_py.formats.elfstruct`), the name with
its NUL, then the descriptor, name and descriptor each padded to 4 bytes.
Like the kernel (``update_note_header_size_elf64()`` in fs/proc/vmcore.c),
a note with ``n_namesz == 0`` ends the area.

- :func:`note_bytes` encodes one note (what corewriter and the backup map
  write);
- :func:`iter_notes` walks an area and yields each note's header and
  position, checking nothing past the header;
- on top of the walk: :func:`parse_notes` (every note as a :class:`Note`,
  a :class:`FormatError` for one that runs past its area) and
  :func:`kept_size` (how much of an area ``/proc/vmcore`` keeps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from kexec_py.errors import FormatError
from kexec_py.formats.elfstruct import ELFCLASS64, LAYOUTS, Buffer, ElfStruct

#: Elf32_Nhdr is Elf64_Nhdr: by byte order only
_NHDR: dict[bool, ElfStruct] = {little: LAYOUTS[(ELFCLASS64, little)].nhdr
                                for little in (True, False)}
NHDR_SIZE = _NHDR[True].size


def pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True, slots=True)
class Note:
    """One ELF note: ``name`` without its NUL, ``type``, ``desc`` bytes."""

    name: str
    type: int
    desc: bytes


class NoteEntry(NamedTuple):
    """Where one note is in its area: its header at ``offset`` and the
    header's fields."""

    offset: int
    namesz: int
    descsz: int
    type: int

    @property
    def name_offset(self) -> int:
        return self.offset + NHDR_SIZE

    @property
    def desc_offset(self) -> int:
        return self.offset + NHDR_SIZE + pad4(self.namesz)

    @property
    def end(self) -> int:
        """Where the next note starts (the descriptor's padding included)."""
        return self.desc_offset + pad4(self.descsz)


def note_bytes(name: bytes | str, ntype: int, desc: bytes, little: bool = True) -> bytes:
    """One note: the header, the name with its NUL (a str is UTF-8
    encoded), the descriptor, each padded to 4 bytes."""
    n = (name.encode() if isinstance(name, str) else name) + b"\0"
    return (_NHDR[little].pack(len(n), len(desc), ntype) + n + bytes(pad4(len(n)) - len(n))
            + desc + bytes(pad4(len(desc)) - len(desc)))


def iter_notes(data: Buffer, little: bool) -> Iterator[NoteEntry]:
    """The notes of an area, in order, while a whole header fits and up to
    the first with ``n_namesz == 0``.  Each is yielded before its name and
    descriptor are checked against the area's end: that is the caller's
    rule (an error, or the end of the area)."""
    unpack = _NHDR[little].unpack_from
    pos, end = 0, len(data)
    while pos + NHDR_SIZE <= end:
        namesz, descsz, ntype = unpack(data, pos)
        if namesz == 0:
            return
        entry = NoteEntry(pos, namesz, descsz, ntype)
        yield entry
        pos = entry.end


def parse_notes(data: Buffer, little: bool, where: str) -> list[Note]:
    """The notes of one PT_NOTE.  A note whose descriptor runs past the end
    of ``data`` is a :class:`FormatError` naming ``where``."""
    out: list[Note] = []
    end = len(data)
    for n in iter_notes(data, little):
        dpos = n.desc_offset
        if dpos + n.descsz > end:
            raise FormatError(
                f"{where}: note {len(out)} (n_namesz {n.namesz}, n_descsz {n.descsz}) runs past "
                f"the end of its PT_NOTE ({end} bytes)", "the image is corrupt")
        name = bytes(data[n.name_offset:n.name_offset + n.namesz]).rstrip(b"\0")
        out.append(Note(name.decode("ascii", "replace"), n.type,
                        bytes(data[dpos:dpos + n.descsz])))
    return out


def kept_size(data: Buffer, little: bool) -> int:
    """The size the kernel keeps of a PT_NOTE: the notes up to the first
    with ``n_namesz == 0`` or the first that would run past the end of
    ``data`` (its ``p_memsz``), padding included."""
    pos = 0
    for n in iter_notes(data, little):
        if n.end > len(data):
            break
        pos = n.end
    return pos
