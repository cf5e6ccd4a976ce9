"""Single source of the package version (read statically by setup.cfg, so building needs no torch)."""

__version__ = "0.1.0"
