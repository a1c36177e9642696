"""What the operator asked to load, and the one check of it.

Both front ends (``kexec-py load`` and the ``kexec`` compatible one) build
a :class:`LoadRequest`; every rule about which options go together is
here, once: :meth:`LoadRequest.validate` (the rules that need no file) and
:meth:`LoadRequest.syscall_for` (the ones that need the image's format).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from kexec_py.errors import FormatError, KexecError, UnsupportedError

__all__ = ["FALLBACK_ERRNOS", "IMAGE_TYPES", "LoadRequest", "RequestError"]

#: kexec_file_load errors after which "auto" tries kexec_load (kexec-tools
#: 2.0.27+); signature errors (EKEYREJECTED, ENOKEY, EBADMSG, EPERM) are final
FALLBACK_ERRNOS = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.ENOTSUP})
#: -t/--type values (kexec-tools' names) -> what :func:`~kexec_py.load.image.image_kind` says
IMAGE_TYPES = {"bzImage64": "bzImage", "elf-x86_64": "elf-kernel"}


class RequestError(KexecError):
    """Options that exclude each other: a usage error (exit status 2)."""

    exit_code = 2


@dataclass
class LoadRequest:
    kernel: Path
    initrd: Path | None = None
    cmdline: str | None = None
    crash: bool = False
    #: "auto" (kexec_file_load, then kexec_load on ENOSYS/EINVAL/ENOEXEC/ENOTSUP),
    #: "file" (-s), "load" (-c)
    syscall: str = "auto"
    #: --entry: the entry point passed to kexec_load instead of ours
    entry: int | None = None
    #: --mem-min / --mem-max (inclusive, as kexec-tools takes it)
    mem_min: int = 0
    mem_max: int | None = None
    #: --load-preserve-context: KEXEC_PRESERVE_CONTEXT (kexec jump), kexec_load only
    preserve_context: bool = False
    #: -t/--type: "bzImage64" or "elf-x86_64" (kexec-tools' names); None detects
    image_type: str | None = None

    def kexec_load_only(self) -> list[str]:
        """The options given that only kexec_load can honour."""
        return [opt for opt, on in (("--entry", self.entry is not None),
                                    ("--mem-min", self.mem_min != 0),
                                    ("--mem-max", self.mem_max is not None),
                                    ("--load-preserve-context", self.preserve_context))
                if on]

    def validate(self) -> None:
        """The rules that need no file: raises :class:`RequestError`."""
        only = self.kexec_load_only()
        if self.syscall == "file" and only:
            raise RequestError(f"{', '.join(only)} need kexec_load, not kexec_file_load (-s)",
                               "use -c, or drop -s")
        if self.crash and self.preserve_context:
            raise RequestError("-p and --load-preserve-context exclude each other",
                               "a crash kernel does not return: drop one of them")

    def syscall_for(self, kind: str) -> str:
        """"file" or "load" for an image of ``kind`` (what
        :func:`~kexec_py.load.image.image_kind` says): -s and -c as asked;
        the default tries kexec_file_load first (the caller falls back),
        except where only kexec_load can do what was asked (ELF images,
        --entry, --mem-min, --mem-max, --load-preserve-context)."""
        self.validate()
        if self.syscall == "file":
            if kind.startswith("elf"):
                raise FormatError(f"{self.kernel} is an ELF image: kexec_file_load takes only "
                                  "bzImages on x86_64", "use -c (kexec_load)")
            return "file"
        if self.syscall == "load" or kind.startswith("elf") or self.kexec_load_only():
            return "load"
        return "file"

    def check_type(self, kind: str) -> None:
        """-t/--type against the format found, and the formats no kernel
        load takes (an ELF core, an unknown file)."""
        name = str(self.kernel)
        if self.image_type is not None:
            want = IMAGE_TYPES.get(self.image_type)
            if want is None:
                raise FormatError(f"unknown image type {self.image_type!r}",
                                  f"kexec-py knows {', '.join(IMAGE_TYPES)}")
            if want != kind:
                found = next((t for t, k in IMAGE_TYPES.items() if k == kind), kind)
                raise FormatError(f"{name} is not of type {self.image_type}: it is {found}",
                                  f"drop -t, or give -t {found}" if found in IMAGE_TYPES
                                  else "give a bzImage or an ELF vmlinux")
        if kind == "elf-core":
            raise FormatError(f"{name} is an ELF core (a dump or hibernation image), not a "
                              "kernel", f"resume it with 'kexec-py resume {name}'")
        if kind == "unknown":
            raise FormatError(f"{name} is neither a bzImage nor an ELF file",
                              "give an x86_64 bzImage (/boot/vmlinuz-*) or an ELF vmlinux")

    def refuse_crash_kexec_load(self) -> None:
        """kexec-py builds no ELF core header of the running kernel, which
        a crash kernel loaded through kexec_load needs."""
        if self.crash:
            raise UnsupportedError(
                "crash kernels through kexec_load need an ELF core header of this kernel's "
                "memory, which kexec-py does not build",
                "load the crash kernel with kexec_file_load: -p -s")
