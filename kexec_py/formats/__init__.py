"""File formats: the byte layouts of the files kexec-py reads, and the code
that parses them into kexec-py's own types.

Only parsers live here (and the one writer of the format they read, ELF
cores): nothing in this package places segments, builds boot parameters,
calls the kernel or prints.  Callers hand in buffers (mmap slices), except
:func:`~kexec_py.formats.vmcore.open_core`, which maps the image it is
given, and :func:`~kexec_py.formats.corewriter.write_core`, which writes one.
How a kernel is booted from what is parsed here is in :mod:`kexec_py.arch`
and :mod:`kexec_py.load.loader`.

- :mod:`~kexec_py.formats.bzimage`: the x86 bzImage setup header.
- :mod:`~kexec_py.formats.elfstruct`: the ELF structures read and written
  by hand (``Elf{32,64}_Ehdr``, ``_Phdr``, ``_Shdr``, ``_Nhdr`` per class
  and byte order) and the ELF constants; every module below takes its
  layouts from it.
- :mod:`~kexec_py.formats.notes`: ELF notes: the one encoder and the one
  walker.
- :mod:`~kexec_py.formats.elf`: ELF kernels (vmlinux) as kexec segments;
  the only user of pyelftools (for the ELF header), with a ``struct`` pass
  over the program headers.
- :mod:`~kexec_py.formats.vmcore`: hibernation images, ELF cores as
  ``/proc/vmcore`` presents them, read column-wise for 100,000+ program
  headers; kexec-py's own ``KEXEC_PY`` note.
- :mod:`~kexec_py.formats.corewriter`: the streaming, sparse-aware writer
  of ELF64 cores (``save-image``, ``dump-memory``).
"""
