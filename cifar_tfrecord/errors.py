"""The one exception type for bad input from the user."""


class UserInputError(Exception):
    """Bad input: a corrupt file, a wrong flag, missing credentials.

    Scripts print the message as a single line and exit non-zero, so the
    message always names the offending file, id or value.
    """
