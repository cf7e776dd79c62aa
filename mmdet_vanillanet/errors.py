"""Errors that are the user's to fix: the tools print their message on one line, no traceback."""


class InputError(ValueError):
    """A bad argument, config value or file; the message names it and what is allowed."""
