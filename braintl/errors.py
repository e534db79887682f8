"""Errors a user can fix: the CLI prints their one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message names the problem and the fix."""
