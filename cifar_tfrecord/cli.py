"""Glue between absl flags and the config dataclasses, for the thin scripts."""

import dataclasses
import sys
import types
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from cifar_tfrecord.errors import UserInputError

_DEFINERS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,
}


def define_flags(config_class) -> None:
    """One flag per config field, with the field's default and help text.

    A field that is itself a config contributes its own fields as flags.
    """
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            define_flags(field.type)
        else:
            _DEFINERS[_base_type(field.type)](field.name, field.default, field.metadata['help'])


def config_from_flags(config_class):
    """The config built from the parsed flags of `define_flags`."""
    values = {}
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            values[field.name] = config_from_flags(field.type)
        else:
            values[field.name] = flags.FLAGS[field.name].value
    return config_class(**values)


_command_line = sys.argv


def command_line() -> list[str]:
    """The command line of the script `run` runs, flags included."""
    return list(_command_line)


def recipe(argv: list[str]) -> dict:
    """What a command line was made of: its flag files, with their text, and
    the flags it gave besides (which override the files' when they come later).
    """
    flagfiles, flags_given = {}, []
    arguments = iter(argv[1:])
    for argument in arguments:
        if argument == '--flagfile':
            argument = '--flagfile=' + next(arguments, '')
        if argument.startswith('--flagfile='):
            path = argument.split('=', 1)[1]
            with open(path) as file:
                flagfiles[path] = file.read()
        else:
            flags_given.append(argument)
    return {'flagfiles': flagfiles, 'flags': flags_given}


def _base_type(annotation) -> type:
    if isinstance(annotation, types.UnionType):  # `str | None`
        return next(member for member in annotation.__args__ if member is not type(None))
    return annotation


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """`app.run(main)`, with bad input reported as one line and exit status 1.

    `argv` (default: sys.argv) is the command line `command_line` returns.
    """
    global _command_line
    _command_line = list(argv if argv is not None else sys.argv)

    def guarded_main(argv):
        try:
            main(argv)
        except UserInputError as error:
            logging.flush()
            print(f'error: {error}', file=sys.stderr)
            sys.exit(1)

    app.run(guarded_main, argv=argv)
