"""The one error type of camzoo's datasets, in a module of its own so that every data module
(base, transforms, files, the loaders) can raise it without importing another."""


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file and record."""
