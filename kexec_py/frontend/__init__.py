"""The front ends: where options come in and reports go out.

Nothing below this package prints; errors travel up as
:class:`~kexec_py.errors.KexecError` and are turned into ``error:`` /
``hint:`` lines and exit statuses here.

- :mod:`~kexec_py.frontend.main`: the console entry's dispatch (``kexec-py``
  or, by the name it was called by, ``kexec``) and the signal discipline
  (:func:`~kexec_py.frontend.main.hold`).
- :mod:`~kexec_py.frontend.cli`: ``kexec-py`` (click).
- :mod:`~kexec_py.frontend.compat`: kexec-tools' command line, option for
  option, with its exit statuses.
- :mod:`~kexec_py.frontend.demo`: the hibernation cycle on the model.
- :mod:`~kexec_py.frontend.render`, :mod:`~kexec_py.frontend.output`: tables,
  progress bars and JSON (rich, imported only when a table is drawn).
- :mod:`~kexec_py.frontend.netdown`: taking network interfaces down before
  ``kexec -e``, as kexec-tools does (only for the running kernel at /).
"""
