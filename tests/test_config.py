"""The configs: shared defaults written once, bad values refused."""

import dataclasses
import subprocess
import sys

import pytest

from cifar_tfrecord.config import (BenchmarkConfig, ConvertConfig, EvaluateConfig, InputConfig,
                                   TrainConfig)


def test_the_config_module_needs_nothing_but_the_standard_library():
    # Scripts answer --help and bad flags from it before TensorFlow loads.
    result = subprocess.run([sys.executable, '-c', (
        'import sys; import cifar_tfrecord.config; '
        'print(sorted(name for name in sys.modules if name.split(".")[0] in '
        '("tensorflow", "keras", "numpy", "absl", "h5py")))')],
        capture_output=True, text=True, check=True)
    assert result.stdout.strip() == '[]'


@pytest.mark.parametrize('change, key_words', [
    (dict(batch_size=0), ['--batch_size=0']),
    (dict(mixed_precision='float8'), ['--mixed_precision=float8']),
])
def test_a_bad_value_is_refused_naming_its_flag(change, key_words):
    with pytest.raises(ValueError) as raised:
        dataclasses.replace(TrainConfig(), **{
            key: value for key, value in change.items() if key != 'batch_size'},
            **({'input': dataclasses.replace(InputConfig(), batch_size=change['batch_size'])}
               if 'batch_size' in change else {})).validate()
    for words in key_words:
        assert words in str(raised.value)


def test_shared_defaults_are_the_same_everywhere():
    assert (ConvertConfig().output_dir == InputConfig().records_dir
            == EvaluateConfig().records_dir == BenchmarkConfig().records_dir)
    assert TrainConfig().model_dir == EvaluateConfig().model_dir
    assert InputConfig().batch_size == EvaluateConfig().batch_size == BenchmarkConfig().batch_size


@pytest.mark.parametrize('suite, repeats', [('convert', 3), ('train', 3), ('input', 5)])
def test_each_benchmark_suite_has_its_runs_per_measurement(suite, repeats):
    """Several runs each, so that the spread is measured; --repeats overrides."""
    assert BenchmarkConfig(suite=suite).runs_per_measurement() == repeats
    assert BenchmarkConfig(suite=suite, repeats=7).runs_per_measurement() == 7
