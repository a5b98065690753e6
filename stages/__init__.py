"""The savi engine: one module per stage, usable as a library without the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("savi")
except PackageNotFoundError:  # a source tree put on the path without installing it
    __version__ = "unknown"
