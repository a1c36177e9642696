"""Loading, in the order a load runs:

1. :mod:`~kexec_py.load.request`: what was asked (:class:`LoadRequest`), and
   the one check of which options go together;
2. :mod:`~kexec_py.load.image`: the files, opened once; the kernel mapped
   and its format identified once;
3. :mod:`~kexec_py.load.kernel`: a kernel's segments and entry point,
   computed in one place for every kexec_load of a kernel (the
   architecture's part is :mod:`kexec_py.arch`);
4. :mod:`~kexec_py.load.plan` and :mod:`~kexec_py.load.staging`: packing
   segments into kexec_load calls, one (KS_full) or staged
   (KS_start/KS_mid/KS_final), and carrying a staged plan out;
5. :mod:`~kexec_py.load.execute`: the choice of system call and the call
   (load, unload, dry-run plans).

:mod:`~kexec_py.load.inspect` reports what an image is and what a load
would make of it.  Hibernation builds on this package
(:mod:`kexec_py.hibernate`).
"""
