"""User-facing errors.

Anything a user can cause (a bad config key, a missing file, a malformed JSONL line) raises a subclass of
``UserError`` whose message names what is wrong, where, and how to fix it. The CLI prints that one line
and exits with code 2, no traceback; bugs in thinktune itself still raise ordinary exceptions.
"""


class UserError(Exception):
    """An error in what the user gave us: printed as one line, exit code 2."""


class ConfigError(UserError):
    """A config key, value or combination that cannot be used."""


class DataError(UserError):
    """A data file that is missing or breaks its row schema."""
