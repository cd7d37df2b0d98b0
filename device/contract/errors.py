"""Errors a user can cause and fix.

A `UserError` carries one line that names what is wrong and where (file, key, value).
The command-line entry points print that line and exit with status 2, never a traceback.
"""


class UserError(Exception):
    """Bad input from the user: a file, a key, a value, a device name."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration file is missing, unreadable or invalid."""
