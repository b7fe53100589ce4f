"""CLI commands for the explain feature (filled in by its issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add this feature's subcommands to the ``absclip`` parser (none yet)."""
