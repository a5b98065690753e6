"""The `savi` command line: Typer commands over the `stages` engine."""
