"""The exceptions a script reports to its user in one line."""


class UserInputError(Exception):
    """Bad input: a corrupt file, a wrong flag, missing credentials.

    Scripts print the message as a single line and exit non-zero, so the
    message always names the offending file, id or value.
    """


class Interrupted(Exception):
    """Ctrl-C stopped the work; the message says what was kept.

    Scripts print it as one line and exit with status 130, as a shell does
    for a command stopped by SIGINT.
    """
