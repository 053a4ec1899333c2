"""JSON read back into the dataclass it was written from, every key checked."""

import dataclasses

import pytest

from cifar_tfrecord import json_fields


@dataclasses.dataclass(frozen=True)
class Inner:
    count: int
    names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Outer:
    rate: float
    flag: bool
    label: str | None
    inner: Inner
    scores: dict[str, float]


WHOLE = {'rate': 1, 'flag': False, 'label': None, 'inner': {'count': 3, 'names': ['a']},
         'scores': {'a': 0.5}}


def test_a_whole_object_is_built_with_its_nested_types():
    parsed = json_fields.parse(WHOLE, Outer)
    assert parsed == Outer(1.0, False, None, Inner(3, ('a',)), {'a': 0.5})
    assert isinstance(parsed.rate, float) and isinstance(parsed.inner.names, tuple)


def test_what_to_json_writes_parses_back_to_the_same_value():
    value = Outer(0.25, True, 'x', Inner(2, ('p', 'q')), {'b': 1.0})
    assert json_fields.parse(json_fields.json.loads(json_fields.to_json(value)), Outer) == value


@pytest.mark.parametrize('change, key_words', [
    # JSON's true is no number, nor 1 a boolean, though Python says so.
    (dict(flag=1), ['flag', 'true or false', '1']),
    (dict(inner={'count': True, 'names': []}), ['inner.count', 'whole number', 'true']),
    (dict(rate='0.1'), ['rate', 'a number', '"0.1"']),
    (dict(label=7), ['label', 'string or null', '7']),
    (dict(inner=[]), ['inner', 'JSON object', '[]']),
    (dict(inner={'count': 1, 'names': 'a'}), ['inner.names', 'a list']),
    (dict(inner={'count': 1, 'names': [], 'extra': 0}), ['unknown key inner.extra']),
    (dict(inner={'names': []}), ['lacks', 'inner.count']),
    (dict(scores={'a': 'high'}), ['scores.a', 'a number']),
])
def test_each_fault_is_named_by_its_key(change, key_words):
    with pytest.raises(json_fields.FieldError) as raised:
        json_fields.parse({**WHOLE, **change}, Outer)
    for word in key_words:
        assert word in str(raised.value)


def test_every_key_is_required_even_one_with_a_default():
    # A default would fill a damaged file with today's value: never guessed.
    with pytest.raises(json_fields.FieldError, match='lacks the key inner.names'):
        json_fields.parse({**WHOLE, 'inner': {'count': 1}}, Outer)


def test_a_value_that_is_no_object_is_refused():
    with pytest.raises(json_fields.FieldError, match='JSON object'):
        json_fields.parse([1, 2], Outer)


def test_long_values_are_cut_to_keep_one_line():
    assert json_fields.shown('x' * 100) == '"' + 'x' * 56 + '...'
