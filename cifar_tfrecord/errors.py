"""The exceptions a script reports to its user in one line."""


class UserInputError(Exception):
    """Bad input: a corrupt file, a wrong flag, missing credentials.

    Scripts print the message as a single line and exit non-zero, so the
    message always names the offending file, id or value.
    """


def first_line(text: str) -> str:
    """What a one-line error quotes of another message: its first line, cut short."""
    return text.strip().split('\n')[0][:200]


def describe(error: Exception) -> str:
    """An exception as a short phrase for a one-line error: 'OSError: what'."""
    message = first_line(str(error))
    return f'{type(error).__name__}: {message}' if message else type(error).__name__


class Interrupted(Exception):
    """Ctrl-C stopped the work; the message says what was kept.

    Scripts print it as one line and exit with status 130, as a shell does
    for a command stopped by SIGINT.
    """
