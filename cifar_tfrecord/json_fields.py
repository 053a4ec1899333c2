"""Checks JSON that a person may have edited against the dataclass it was written from.

The manifest, a run's config.json, state.json and best.json are each
`dataclasses.asdict` of a dataclass, or hold one. Read back, every key must
be one of its fields, and every value of its field's type, or the reader
would fail later, far from the file, in a traceback. The errors name the key
by its path, `splits.train.shards[0].num_examples`, and the value as the
file has it; the caller adds the file.

No TensorFlow here: plots read run folders and start without it.
"""

import dataclasses
import json
import types
import typing


class FieldError(ValueError):
    """JSON that does not match its dataclass; the message names the key."""


def check_object(value, where: str) -> dict:
    """`value` itself, when it is a JSON object."""
    if not isinstance(value, dict):
        raise FieldError(f'{where} must be a JSON object, not {shown(value)}')
    return value


def check_keys(data: dict, fields_of, prefix: str = '', required: bool = True) -> None:
    """The fields of the dataclass `fields_of`, each (unless not `required`)
    and no other; names the first key missing or unknown.

    An unknown key is refused, not ignored: these files are written by this
    code alone, so it is a hand edit, or a newer version's field whose
    meaning this code would miss.
    """
    expected = [field.name for field in dataclasses.fields(fields_of)]
    missing = [key for key in expected if key not in data] if required else []
    if missing:
        raise FieldError(f'lacks the key {prefix}{missing[0]}')
    unknown = [key for key in data if key not in expected]
    if unknown:
        raise FieldError(f'has an unknown key {prefix}{unknown[0]} (the keys there are '
                         f'{", ".join(expected)})')


def check_fields(data, fields_of, prefix: str = '', required: bool = True) -> dict:
    """`check_keys`, then each value checked against its field's annotation,
    nested dataclasses included. Returns `data`."""
    check_object(data, prefix.rstrip('.') or 'the file')
    check_keys(data, fields_of, prefix, required)
    for field in dataclasses.fields(fields_of):
        if field.name in data:
            check_type(data[field.name], field.type, prefix + field.name, required)
    return data


def check_type(value, annotation, where: str, required: bool = True) -> None:
    """A value of a field annotated int, float, bool, str, a union of them
    with None, a tuple (a JSON list), a dict, or a nested dataclass (whose
    keys are `required` or not)."""
    if dataclasses.is_dataclass(annotation):
        check_fields(value, annotation, where + '.', required)
        return
    allowed = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
    if not any(_is_of(value, kind) for kind in allowed):
        names = ' or '.join(_type_name(kind) for kind in allowed)
        raise FieldError(f'{where} must be {names}, not {shown(value)}')


def _is_of(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool or isinstance(value, bool):  # To Python, True is an int; to JSON, not.
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    origin = typing.get_origin(kind) or kind
    if origin is tuple:
        return isinstance(value, list)
    return isinstance(value, origin)


def _type_name(kind) -> str:
    if kind is type(None):
        return 'null'
    origin = typing.get_origin(kind) or kind
    return {bool: 'true or false', int: 'a whole number', float: 'a number', str: 'a string',
            tuple: 'a list', list: 'a list', dict: 'a JSON object'}.get(origin, str(kind))


def shown(value, limit: int = 60) -> str:
    """A JSON value as the file has it, cut short to keep a message on one line."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'
