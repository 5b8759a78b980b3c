"""The one exception scripts turn into a one-line message."""


class UserError(Exception):
    """Bad input from the user: a flag, a file.  The message says what to do."""
