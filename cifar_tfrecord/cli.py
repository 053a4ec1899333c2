"""Glue between absl flags and the config dataclasses: a script defines its
flags from configs (`define_flags`), builds its config from them
(`config_from_flags`) and runs its main through `run`."""

import dataclasses
import os
import re
import sys
import types
import typing
from typing import Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging

from cifar_tfrecord import config as config_lib
from cifar_tfrecord import startup
from cifar_tfrecord.errors import Interrupted, UserInputError

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 130

# The flags `define_flags` defines belong to the script that calls it (absl
# would otherwise file them under this module, and show none in a script's
# help).
flags.disclaim_key_flags()

# `bool | None` is a boolean flag that may stay unset.
_DEFINERS = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
             bool: flags.DEFINE_boolean}


class _FlagGroup(NamedTuple):
    """Flags `--help` lists under one heading."""
    title: str
    description: str
    flags: tuple[flags.Flag, ...]


# The groups of the flags `define_flags` defined, in definition order.
_flag_groups: list[_FlagGroup] = []


def define_flags(config_class) -> None:
    """One flag per config field, nested configs' included. `--help` lists
    them in groups: each nested config's, then each group a field names
    (config.FLAG_GROUPS), then the config's other fields."""
    # 'data service' for DataServiceConfig.
    title = ' '.join(re.findall(r'[A-Z][a-z]*', config_class.__name__.removesuffix('Config')))
    for title, description, fields in _field_groups(config_class, title.lower()):
        _flag_groups.append(_FlagGroup(title, description,
                                       tuple(_define_flag(field) for field in fields)))


def config_from_flags(config_class):
    """The config of the parsed flags of `define_flags`, validated: a value it
    refuses raises UserInputError."""
    try:
        return _config_of_flags(config_class).validate()
    except ValueError as error:
        raise UserInputError(str(error)) from None


def _config_of_flags(config_class):
    values = {}
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            values[field.name] = _config_of_flags(field.type)
        else:
            value = flags.FLAGS[field.name].value
            values[field.name] = tuple(value) if _is_tuple(field.type) else value
    return config_class(**values)


def _field_groups(config_class, title: str) -> list[tuple[str, str, list]]:
    nested, named, own = [], {}, []
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            nested.extend(_field_groups(field.type, field.name))
        elif 'group' in field.metadata:
            named.setdefault(field.metadata['group'], []).append(field)
        else:
            own.append(field)
    groups = nested + [(name, description, named[name])
                       for name, description in config_lib.FLAG_GROUPS.items() if name in named]
    if own:
        summary = (config_class.__doc__ or '').strip().split('\n')[0].replace('`', '')
        groups.append((title, summary, own))
    return groups


def _define_flag(field: dataclasses.Field) -> flags.Flag:
    base = field.type
    if isinstance(base, types.UnionType):  # `str | None`
        base = next(member for member in typing.get_args(base) if member is not type(None))
    if _is_tuple(base):
        flags.DEFINE_list(field.name, list(field.default), field.metadata['help'])
    else:
        _DEFINERS[base](field.name, field.default, field.metadata['help'])
    return flags.FLAGS[field.name]


def _is_tuple(annotation) -> bool:
    return typing.get_origin(annotation) is tuple


_HELP_FOOTER = (
    'Flags also come from files: --flagfile=FILE (the recipes in scripts/recipes/ are '
    "train.py's). --helpfull lists the flags of absl and TensorFlow too. TensorFlow's "
    f'start-up log is hidden; {startup.VERBOSE_VARIABLE}=1 shows it.')

# The script `run` runs: what its help shows, and its command line.
_script = types.SimpleNamespace(doc='', file='', command_line=sys.argv)


class _HelpFlag(flags.BooleanFlag):
    """--help, --helpshort and --helpfull: help on standard output, and exit 0
    (absl's own list only the flags a script defines itself, and exit 1)."""

    def __init__(self, name: str, short_name: str | None = None, full: bool = False):
        super().__init__(name, False, 'Show every flag, of absl and TensorFlow too.' if full
                         else "Show this script's flags.", short_name=short_name,
                         allow_override=True, allow_hide_cpp=True)
        self._full = full

    def parse(self, argument) -> None:
        super().parse(argument)
        if self.value:
            sys.stdout.write(help_text(full=self._full))
            sys.stdout.flush()
            sys.exit(0)


def help_text(full: bool = False) -> str:
    """What --help (or --helpfull) prints for the script `run` runs."""
    # Those of the script `run` runs: tests load every script into one process.
    groups = [group for group in _flag_groups if all(map(_in_force, group.flags))]
    parts = [_script.doc.strip() or f'USAGE: {_script.file} [flags]']
    for group in groups:
        heading = f'{group.title} flags: {group.description}'.rstrip()
        parts.append('\n'.join([heading, *map(_flag_help, group.flags)]))
    parts.append(flags.text_wrap(_HELP_FOOTER))
    if full:
        ours = {flag for group in groups for flag in group.flags}
        modules = flags.FLAGS.flags_by_module_dict()
        parts.append('\n'.join(
            ['Flags of absl, TensorFlow and the other libraries, by module:'] +
            [flags.FLAGS.module_help(module) for module in sorted(modules)
             if any(_in_force(flag) and flag not in ours for flag in modules[module])]))
    return '\n\n'.join(parts) + '\n'


def _in_force(flag: flags.Flag) -> bool:
    return flag.name in flags.FLAGS and flags.FLAGS[flag.name] is flag


def _flag_help(flag: flags.Flag) -> str:
    """One flag as absl's help shows it, with `not set` for a default of None."""
    name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
    default = 'not set' if flag.default is None else flag.default_as_str
    lines = [flags.text_wrap(f'{name}: {flag.help}', indent='    ', firstline_indent='  '),
             flags.text_wrap(f'(default: {default})', indent='    ')]
    if flag.parser.syntactic_help:
        lines.append(flags.text_wrap(f'({flag.parser.syntactic_help})', indent='    '))
    return '\n'.join(lines)


def command_line() -> list[str]:
    """The command line of the script `run` runs, flags included."""
    return list(_script.command_line)


def no_arguments(argv: list[str]) -> None:
    """Refuses arguments left over after the flags, in one line."""
    if len(argv) > 1:
        raise UserInputError(f'unexpected arguments: {" ".join(argv[1:])} '
                             '(flags are written --name=value)')


def run(main: Callable[[list[str]], None], argv: list[str] | None = None,
        interrupted: str = 'nothing was written') -> None:
    """`app.run(main)`, with bad input reported as one line and exit status 1,
    Ctrl-C as one line and exit status 130, `--help` listing the script's
    flags, and TensorFlow's start-up log hidden (`startup`), so a script
    imports the modules that load TensorFlow inside `main`.

    `argv` defaults to sys.argv. `interrupted` says what Ctrl-C leaves,
    unless the work says it itself (`errors.Interrupted`).
    """
    _script.command_line = list(argv if argv is not None else sys.argv)
    startup.quiet_tensorflow(argv=_script.command_line)
    script_globals = main.__globals__
    _script.doc = script_globals.get('__doc__') or ''
    _script.file = os.path.basename(script_globals.get('__file__', ''))
    app.define_help_flags()
    for flag in (_HelpFlag('help', '?'), _HelpFlag('helpshort'), _HelpFlag('helpfull', full=True)):
        if not isinstance(flags.FLAGS[flag.name], _HelpFlag):
            flags.DEFINE_flag(flag, module_name=app.__name__)

    def guarded_main(argv):
        try:
            main(argv)
        except UserInputError as error:
            _fail(f'error: {error}')
        except Interrupted as error:
            _fail(f'interrupted: {error}', INTERRUPTED_STATUS)
        except KeyboardInterrupt:
            _fail(f'interrupted: {interrupted}', INTERRUPTED_STATUS)

    app.run(guarded_main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # absl's flag errors, in the same one line.
        _fail('error: ' + '; '.join(str(error).splitlines()))


def _fail(line: str, status: int = 1) -> None:
    logging.flush()
    print(line, file=sys.stderr)
    sys.exit(status)
