"""JSON that a person may have edited, read back into the dataclass it was written from.

The manifest and a run's config.json, state.json, best.json and metrics.json
are each `dataclasses.asdict` of a dataclass. Read back, every field must be
there, no key may be unknown, and every value must be of its field's type,
or the reader would fail later, far from the file, in a traceback. Errors
name the key by its path, `splits.train.shards[0].num_examples`, and the
value as the file has it; the caller adds the file.

No TensorFlow here: plots read run folders and start without it.
"""

import dataclasses
import json
import types
import typing


class FieldError(ValueError):
    """JSON that does not match its dataclass; the message names the key."""


def parse(data, fields_of, where: str = ''):
    """The `fields_of` dataclass that `data` (a JSON value) holds.

    Nested dataclasses, tuples (JSON lists) and dicts of them are built as
    their annotations say. An unknown key is refused, not ignored: these
    files are written by this code alone, so it is a hand edit, or a newer
    version's field whose meaning this code would miss.

    Raises:
        FieldError: naming the first key missing, unknown or of another type.
    """
    if not isinstance(data, dict):
        raise FieldError(f'{where or "the file"} must be a JSON object, not {shown(data)}')
    prefix = f'{where}.' if where else ''
    names = [field.name for field in dataclasses.fields(fields_of)]
    missing = [name for name in names if name not in data]
    if missing:
        raise FieldError(f'lacks the key {prefix}{missing[0]}')
    unknown = [key for key in data if key not in names]
    if unknown:
        raise FieldError(f'has an unknown key {prefix}{unknown[0]} (the keys there are '
                         f'{", ".join(names)})')
    hints = typing.get_type_hints(fields_of)
    return fields_of(**{name: _value(data[name], hints[name], prefix + name) for name in names})


def _value(value, annotation, where: str):
    """`value` as `annotation` has it, checked; nested containers built."""
    if dataclasses.is_dataclass(annotation):
        return parse(value, annotation, where)
    if isinstance(annotation, types.UnionType):  # `str | None`, `bool | None`
        kinds = annotation.__args__
        if value is None and type(None) in kinds:
            return None
        kind = next(kind for kind in kinds if kind is not type(None))
        if not _is_of(value, kind):
            names = ' or '.join(_type_name(kind) for kind in kinds)
            raise FieldError(f'{where} must be {names}, not {shown(value)}')
        return _value(value, kind, where)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if not _is_of(value, annotation):
        raise FieldError(f'{where} must be {_type_name(annotation)}, not {shown(value)}')
    if origin is tuple:  # tuple[X, ...]
        return tuple(_value(item, arguments[0], f'{where}[{index}]')
                     for index, item in enumerate(value))
    if origin is dict:  # dict[str, X]
        return {key: _value(item, arguments[1], f'{where}.{key}') for key, item in value.items()}
    return float(value) if annotation is float else value


def _is_of(value, kind) -> bool:
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
            tuple: 'a list', dict: 'a JSON object'}.get(origin, str(kind))


def to_json(value) -> str:
    """A dataclass as the JSON text `parse` reads back."""
    return json.dumps(dataclasses.asdict(value), indent=2) + '\n'


def shown(value, limit: int = 60) -> str:
    """A JSON value as the file has it, cut short to keep a message on one line."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'
