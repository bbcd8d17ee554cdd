"""Command-line entry points (Typer): one module per command, common.py for shared plumbing."""
