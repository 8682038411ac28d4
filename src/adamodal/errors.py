"""One exception type for every problem a user can fix.

The CLI catches :class:`AdamodalError` and prints its message on one line (exit code 2 for a
bad config or command line, 1 for bad data or a failed fetch) instead of a traceback.
"""


class AdamodalError(Exception):
    """A problem the user can fix; the message names the file, field or command involved."""

    exit_code = 1


class ConfigError(AdamodalError):
    """An unknown or invalid configuration key or value."""

    exit_code = 2


class DataError(AdamodalError):
    """Missing, corrupt or inconsistent data, or a fetch that failed."""

    exit_code = 1
