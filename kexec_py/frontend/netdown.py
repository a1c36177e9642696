"""Bringing the network interfaces down before a kexec, as kexec-tools'
``ifdown()`` does before ``kexec -e`` (``-x`` skips it).

A device whose driver keeps DMA running across the jump would write into
the new kernel's memory; taking every interface down stops the drivers
first.  For each interface that is up, ``SIOCSIFFLAGS`` clears ``IFF_UP``;
failures are reported to ``trace`` and otherwise ignored, as there.

The modules are imported at the top (``fcntl`` and ``_socket`` are small C
modules) so that tools which trace kexec-py's imports to build an initramfs
see them.
"""

from __future__ import annotations

import _socket
import fcntl
import struct
from collections.abc import Callable

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: struct ifreq: char ifr_name[16]; short ifr_flags; (padding to 40 bytes)
IFREQ = struct.Struct("16sh22x")


def ifdown(trace: Callable[[str], None]) -> int:
    """Take every interface that is up down; returns how many were."""
    try:
        names = [name for _, name in _socket.if_nameindex()]
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    except OSError as e:
        trace(f"ifdown: {e.strerror}")
        return 0
    downed = 0
    try:
        for name in names:
            raw = name.encode()[:15]
            try:
                got = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, IFREQ.pack(raw, 0))
                flags = IFREQ.unpack(got)[1]
                if not flags & IFF_UP:
                    continue
                trace(f"ioctl(SIOCSIFFLAGS, {name}, flags={flags & ~IFF_UP & 0xFFFF:#x})")
                fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, IFREQ.pack(raw, flags & ~IFF_UP))
                downed += 1
            except OSError as e:
                trace(f"ifdown {name}: {e.strerror}")
    finally:
        sock.close()
    return downed
