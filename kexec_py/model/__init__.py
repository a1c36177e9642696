"""An in-process model of a kernel with the kexec multi-stage load patch.

The ``model`` backend (:mod:`kexec_py.boundary.backends.model`) is built from:

- :mod:`.config`: the modelled machine (memory map, allocator seed, limits);
- :mod:`.physmem`: physical memory, a sparse file (pread/pwrite);
- :mod:`.order`: the seeded order in which free pages are handed out;
- :mod:`.tables`: the per-page tables (who holds each page; an image's
  dst -> src map and its reverse), a byte or a word per page;
- :mod:`.kernel`: the kexec core of the patched kernel -- the stage state
  machine, the segment rules, the page allocator of the seed (in place,
  swap, re-homing, unusable pages), the dst -> src page map, the
  relocation list, execution and kexec jump;
- :mod:`.fileload`: what ``kexec_file_load`` does with a bzImage;
- :mod:`.store`: the state directory that lets separate invocations share
  one model kernel.

Nothing here prints; errors leave the kernel as :class:`kernel.KernelErr`
(an errno and the model's reason) and the backend turns them into
:class:`kexec_py.errors.SyscallError`, exactly as the linux backend does.
"""
