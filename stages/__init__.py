"""The savi engine: one module per stage, usable as a library without the CLI."""

__version__ = "0.1.0"
