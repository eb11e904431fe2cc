"""The ``smoothcert`` command line: one module per command, :func:`main` dispatches."""

from smoothcert.cli.main import main

__all__ = ["main"]
