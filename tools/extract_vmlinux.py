#!/usr/bin/env python3
"""Extract the ELF vmlinux from an x86 bzImage (our own take on the kernel's
scripts/extract-vmlinux).

A bzImage's protected-mode payload holds the compressed vmlinux at
``payload_offset`` (setup header 0x248, protocol 2.08+) for
``payload_length`` bytes; the format is told by its magic number.  Python's
standard library decompresses gzip, xz, lzma and bzip2 (Debian's kernels
are xz); zstd, lz4 and lzo need tools this script does not call.  Without
the header fields (older kernels), the payload is searched for each
format's magic, as extract-vmlinux does, and the first candidate that
decompresses to an ELF file wins.

Usage: tools/extract_vmlinux.py BZIMAGE OUTPUT
"""

from __future__ import annotations

import bz2
import lzma
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

#: magic -> (name, decompress(data) -> bytes)
Decompressor = Callable[[bytes], bytes]


def _gzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return d.decompress(data)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


FORMATS: list[tuple[bytes, str, Decompressor | None]] = [
    (b"\x1f\x8b\x08", "gzip", _gzip),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (b"BZh", "bzip2", _bzip2),
    (b"\x5d\x00\x00", "lzma", _lzma),
    (b"\x28\xb5\x2f\xfd", "zstd", None),
    (b"\x02\x21\x4c\x18", "lz4", None),
    (b"\x89LZO", "lzo", None),
]


class ExtractError(Exception):
    pass


def _try(data: bytes, name: str, fn: Decompressor | None) -> bytes:
    if fn is None:
        raise ExtractError(f"the payload is {name}-compressed; Python's standard library "
                           f"cannot decompress {name}: use the kernel's scripts/extract-vmlinux")
    try:
        out = fn(data)
    except (OSError, lzma.LZMAError, zlib.error, EOFError, ValueError) as e:
        raise ExtractError(f"{name} payload does not decompress: {e}") from None
    if not out.startswith(b"\x7fELF"):
        raise ExtractError(f"the {name} payload is not an ELF vmlinux")
    return out


def extract(image: bytes) -> tuple[bytes, str]:
    """The vmlinux inside ``image`` and the compression it used."""
    if len(image) < 0x270 or image[0x202:0x206] != b"HdrS":
        raise ExtractError("not a bzImage (no HdrS at 0x202)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    setup = ((image[0x1F1] or 4) + 1) * 512
    if version >= 0x0208:
        off, length = struct.unpack_from("<II", image, 0x248)
        payload = image[setup + off:setup + off + length]
        for magic, name, fn in FORMATS:
            if payload.startswith(magic):
                return _try(payload, name, fn), name
        raise ExtractError(f"unknown compression at payload_offset {off:#x}: "
                           f"{payload[:6].hex()}")
    errors = []
    for magic, name, fn in FORMATS:
        at = image.find(magic, setup)
        while at >= 0:
            try:
                return _try(image[at:], name, fn), name
            except ExtractError as e:
                errors.append(str(e))
            at = image.find(magic, at + 1)
    raise ExtractError("no compressed vmlinux found" + (f" ({errors[-1]})" if errors else ""))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: extract_vmlinux.py BZIMAGE OUTPUT\n")
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    try:
        vmlinux, how = extract(src.read_bytes())
    except (ExtractError, OSError) as e:
        sys.stderr.write(f"error: {src}: {e}\n")
        return 1
    dst.write_bytes(vmlinux)
    sys.stderr.write(f"{dst}: {len(vmlinux)} bytes of ELF vmlinux ({how} payload)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
