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


def _base_type(annotation) -> type:
    if isinstance(annotation, types.UnionType):  # `str | None`
        return next(member for member in annotation.__args__ if member is not type(None))
    return annotation


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
    """`app.run(main)`, with bad input reported as one line and exit status 1."""

    def guarded_main(argv):
        try:
            main(argv)
        except UserInputError as error:
            logging.flush()
            print(f'error: {error}', file=sys.stderr)
            sys.exit(1)

    app.run(guarded_main, argv=argv)
