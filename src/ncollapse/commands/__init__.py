"""Subcommands of the ``ncollapse`` CLI, one module each (see :mod:`ncollapse.cli`)."""
