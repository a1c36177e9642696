"""Architecture-specific boot code: one subpackage per architecture.

kexec_load takes segments and an entry point and knows nothing of how a
kernel wants to be started; kexec-py, like kexec-tools, does that part in
userspace.  For each architecture it supports, a subpackage here provides:

- the boot parameters the new kernel reads (where its command line, initrd
  and memory map are), as a declared layout and the code that fills it;
- the placement rules: where the kernel, the initrd, the parameters and the
  entry code go in physical memory, and which RAM may hold them;
- the entry code that runs between kexec's jump and the kernel (kexec-tools
  calls it "purgatory"), with the register state the boot protocol wants.

Image formats themselves (headers, ELF) are in :mod:`kexec_py.formats`;
the architecture code uses them.  Today there is one architecture,
:mod:`kexec_py.arch.x86` (x86_64).
"""
