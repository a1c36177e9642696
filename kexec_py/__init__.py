"""kexec-py: a userspace replacement for /sbin/kexec.

Parses kernels (bzImage, ELF vmlinux) and hibernation images (ELF cores)
into kexec segments, loads them with kexec_file_load(2) or kexec_load(2),
and speaks the userspace half of the multi-stage load protocol of the 2008
"kexec based hibernation" patch.
"""

__version__ = "0.1.0"
