"""The ``absclip`` command line: one module per command, shared options in :mod:`absclip.cli.options`."""
