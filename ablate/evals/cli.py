"""Subcommands of this subsystem (registered by ``ablate.cli``)."""


def add_commands(sub) -> None:
    """Add this subsystem's parsers to ``ablate``'s subparsers."""
