"""JSON checked against the dataclass it was written from."""

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


WHOLE = {'rate': 1, 'flag': False, 'label': None, 'inner': {'count': 3, 'names': ['a']}}


def test_a_whole_object_passes_and_ints_are_numbers():
    assert json_fields.check_fields(WHOLE, Outer) == WHOLE


@pytest.mark.parametrize('change, message', [
    # JSON's true is no number, nor 1 a boolean, though Python says so.
    (dict(flag=1), 'flag must be true or false, not 1'),
    (dict(inner={'count': True, 'names': []}), 'inner.count must be a whole number, not true'),
    (dict(rate='0.1'), 'rate must be a number, not "0.1"'),
    (dict(label=7), 'label must be a string or null, not 7'),
    (dict(inner=[]), 'inner must be a JSON object, not []'),
    (dict(inner={'count': 1, 'names': 'a'}), 'inner.names must be a list, not "a"'),
    (dict(inner={'count': 1, 'names': [], 'extra': 0}), 'has an unknown key inner.extra (the '
                                                         'keys there are count, names)'),
    (dict(inner={'names': []}), 'lacks the key inner.count'),
])
def test_each_fault_is_named_by_its_key(change, message):
    with pytest.raises(json_fields.FieldError) as raised:
        json_fields.check_fields({**WHOLE, **change}, Outer)
    assert str(raised.value) == message


def test_keys_may_be_missing_when_not_required_but_never_unknown():
    assert json_fields.check_fields({'inner': {}}, Outer, required=False) == {'inner': {}}
    with pytest.raises(json_fields.FieldError, match='unknown key inner.other'):
        json_fields.check_fields({'inner': {'other': 1}}, Outer, required=False)


def test_long_values_are_cut_to_keep_one_line():
    assert json_fields.shown('x' * 100) == '"' + 'x' * 56 + '...'
