"""Kexec-based hibernation, the userspace half of the 2008 "kexec based
hibernation" design:

- :mod:`~kexec_py.hibernate.window`: the hibernation window and the backup
  pages map (where the swapped pages went, from /proc/kexec_pgmap), as an
  ELF core header or a raw table;
- :mod:`~kexec_py.hibernate.hibernating`: loading the hibernating kernel
  (staged, preserve context, confined to the window, the map injected in
  KS_final);
- :mod:`~kexec_py.hibernate.vmcore`: the hibernating kernel's
  ``/proc/vmcore``, built from physical memory as the kernel builds it;
- :mod:`~kexec_py.hibernate.save`: ``save-image``, streaming a core to an
  image;
- :mod:`~kexec_py.hibernate.resume`: loading an image back for the jump.
"""
