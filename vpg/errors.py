"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class VPGError(Exception):
    """Base of errors caused by the user's input (config, files, data), not by a bug."""


class ConfigurationError(VPGError, ValueError):
    """A config value is wrong (unknown model name, incompatible options...)."""


class MissingFileError(VPGError, FileNotFoundError):
    """A file the config points to does not exist."""


class DataError(VPGError, ValueError):
    """A dataset row is bad; the message names dataset, split, row and the problem."""
