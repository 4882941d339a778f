"""The package version (one constant, read by the CLI, the results files and ``sead.__version__``)."""

__version__ = "0.1.0"
