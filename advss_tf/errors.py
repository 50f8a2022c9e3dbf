"""The one exception type for bad input: the binaries print its message on one line and exit with status 2."""


class UsageError(Exception):
    """A user-facing error: bad flag, missing or malformed data, incompatible artifact."""
