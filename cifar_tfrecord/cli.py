"""Glue between absl flags and the config dataclasses, for the thin scripts.

A script defines its flags from config dataclasses (`define_flags`), builds
its config from them (`config_from_flags`) and runs its main through `run`:
bad input is one `error: ...` line and exit status 1, and `--help` lists the
script's flags, with their defaults, in the groups of its configs.
"""

import dataclasses
import os
import re
import sys
import types
import typing
from typing import Callable

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

_DEFINERS = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_boolean,  # `bool | None`: a boolean flag that may stay unset.
}


@dataclasses.dataclass(frozen=True)
class _FlagGroup:
    """Flags `--help` lists under one heading."""
    title: str
    description: str
    flags: tuple[flags.Flag, ...]


# The groups of the flags `define_flags` defined, in definition order.
_flag_groups: list[_FlagGroup] = []


def define_flags(config_class) -> None:
    """One flag per config field, with the field's default and help text.

    A field that is itself a config contributes its own fields as flags.
    `--help` lists them in groups: each nested config's, then each group a
    field names (config.FLAG_GROUPS), then the config's other fields.
    """
    for title, description, fields in _field_groups(config_class, _title(config_class)):
        _flag_groups.append(_FlagGroup(title, description,
                                       tuple(_define_flag(field) for field in fields)))


def config_from_flags(config_class):
    """The config built from the parsed flags of `define_flags`."""
    values = {}
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            values[field.name] = config_from_flags(field.type)
        elif _is_tuple(field.type):
            values[field.name] = tuple(flags.FLAGS[field.name].value)
        else:
            values[field.name] = flags.FLAGS[field.name].value
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
        groups.append((title, _summary(config_class), own))
    return groups


def _define_flag(field: dataclasses.Field) -> flags.Flag:
    base = _base_type(field.type)
    if _is_tuple(base):
        flags.DEFINE_list(field.name, list(field.default), field.metadata['help'])
    else:
        _DEFINERS[base](field.name, field.default, field.metadata['help'])
    return flags.FLAGS[field.name]


def _base_type(annotation):
    if isinstance(annotation, types.UnionType):  # `str | None`
        return next(member for member in annotation.__args__ if member is not type(None))
    return annotation


def _is_tuple(annotation) -> bool:
    return typing.get_origin(annotation) is tuple


def _title(config_class) -> str:
    """'data service' for DataServiceConfig."""
    words = re.findall(r'[A-Z][a-z]*', config_class.__name__.removesuffix('Config'))
    return ' '.join(words).lower()


def _summary(config_class) -> str:
    return (config_class.__doc__ or '').strip().split('\n')[0].replace('`', '')


# ----------------------------------------------------------------------------
# Help.

_HELP_FOOTER = (
    'Flags also come from files: --flagfile=FILE (the recipes in scripts/recipes/ are '
    "train.py's). --helpfull lists the flags of absl and TensorFlow too. TensorFlow's "
    f'start-up log is hidden; {startup.VERBOSE_VARIABLE}=1 shows it.')


@dataclasses.dataclass
class _Script:
    """The script `run` runs: what its help shows."""
    doc: str = ''
    module: str = ''
    file: str = ''


_script = _Script()


class _HelpFlag(flags.BooleanFlag):
    """--help, --helpshort and --helpfull: help on standard output, and exit 0.

    absl's own list only the flags a script defines itself, and exit 1.
    """

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
    parts = [_script.doc.strip() or f'USAGE: {_script.file} [flags]']
    for group in _script_groups():
        heading = ' '.join([f'{group.title} flags:', group.description]).rstrip()
        parts.append('\n'.join([heading, *(_flag_help(flag) for flag in group.flags)]))
    parts.append(flags.text_wrap(_HELP_FOOTER))
    if full:
        parts.append(_library_flags_help(_script_groups()))
    return '\n\n'.join(parts) + '\n'


def _script_groups() -> list[_FlagGroup]:
    """The groups of the flags in force, and a group of the script's others."""
    groups = [group for group in _flag_groups if all(_in_force(flag) for flag in group.flags)]
    grouped = {flag for group in groups for flag in group.flags}
    others = tuple(flag for flag in flags.FLAGS.get_flags_for_module(_script.module)
                   if flag not in grouped and _in_force(flag))
    if others:
        groups.append(_FlagGroup(_script.file, '', others))
    return groups


def _in_force(flag: flags.Flag) -> bool:
    return flag.name in flags.FLAGS and flags.FLAGS[flag.name] is flag


def _flag_help(flag: flags.Flag) -> str:
    """One flag as absl's help shows it, with `not set` for a default of None."""
    name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
    lines = [flags.text_wrap(f'{name}: {flag.help}', indent='    ', firstline_indent='  ')]
    default = 'not set' if flag.default is None else flag.default_as_str
    lines.append(flags.text_wrap(f'(default: {default})', indent='    '))
    if flag.parser.syntactic_help:
        lines.append(flags.text_wrap(f'({flag.parser.syntactic_help})', indent='    '))
    return '\n'.join(lines)


def _library_flags_help(groups: list[_FlagGroup]) -> str:
    ours = {flag for group in groups for flag in group.flags}
    modules = flags.FLAGS.flags_by_module_dict()
    return '\n'.join(
        ['Flags of absl, TensorFlow and the other libraries, by module:'] +
        [flags.FLAGS.module_help(module) for module in sorted(modules)
         if any(_in_force(flag) and flag not in ours for flag in modules[module])])


def _define_help_flags() -> None:
    app.define_help_flags()
    for flag in (_HelpFlag('help', '?'), _HelpFlag('helpshort'), _HelpFlag('helpfull', full=True)):
        if not isinstance(flags.FLAGS[flag.name], _HelpFlag):
            flags.DEFINE_flag(flag, module_name=app.__name__)


# ----------------------------------------------------------------------------
# Running a script.

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


def no_arguments(argv: list[str]) -> None:
    """Refuses arguments left over after the flags, in one line."""
    if len(argv) > 1:
        raise UserInputError(f'unexpected arguments: {" ".join(argv[1:])} '
                             '(flags are written --name=value)')


def run(main: Callable[[list[str]], None], argv: list[str] | None = None,
        interrupted: str = 'nothing was written') -> None:
    """`app.run(main)`, with bad input reported as one line and exit status 1,
    Ctrl-C as one line and exit status 130, and `--help` listing the script's
    flags.

    `argv` (default: sys.argv) is the command line `command_line` returns.
    `interrupted` says what Ctrl-C leaves, unless the work says it itself
    (`errors.Interrupted`).
    """
    global _command_line
    _command_line = list(argv if argv is not None else sys.argv)
    _describe_script(main)
    _define_help_flags()

    def guarded_main(argv):
        try:
            main(argv)
        except UserInputError as error:
            _fail(str(error))
        except Interrupted as error:
            _fail(f'interrupted: {error}', INTERRUPTED_STATUS, prefix='')
        except KeyboardInterrupt:
            _fail(f'interrupted: {interrupted}', INTERRUPTED_STATUS, prefix='')

    app.run(guarded_main, argv=argv, flags_parser=_parse_flags)


def _describe_script(main: Callable) -> None:
    script_globals = main.__globals__
    name = script_globals.get('__name__', '')
    _script.doc = script_globals.get('__doc__') or ''
    # absl files the flags a script defines under sys.argv[0] when it runs as __main__.
    _script.module = sys.argv[0] if name == '__main__' else name
    _script.file = os.path.basename(script_globals.get('__file__', name))


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # absl's flag errors, in the same one line.
        _fail('; '.join(str(error).splitlines()))


def _fail(message: str, status: int = 1, prefix: str = 'error: ') -> None:
    logging.flush()
    print(f'{prefix}{message}', file=sys.stderr)
    sys.exit(status)
