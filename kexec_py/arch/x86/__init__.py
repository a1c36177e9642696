"""x86_64: the Linux/x86 64-bit boot protocol (Documentation/arch/x86/boot.rst).

- :mod:`.bootparams`: ``struct boot_params`` (the zero page) as a field
  table, the e820 memory map in it, setup_data, the command-line limit;
- :mod:`.placement`: where kexec_load's segments go, following kexec-tools;
- :mod:`.entry`: the entry stub that enters a 64-bit kernel.

The bzImage header these use is :mod:`kexec_py.formats.bzimage`.
"""
