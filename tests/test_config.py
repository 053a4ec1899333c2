"""The configs: shared defaults written once, values older versions recorded."""

import dataclasses

import pytest

from cifar_tfrecord import config
from cifar_tfrecord.config import (BenchmarkConfig, ConvertConfig, EvaluateConfig, InputConfig,
                                   TrainConfig)


@pytest.mark.parametrize('recorded, jit_compile', [
    ('auto', None), ('true', True), ('false', False)])
def test_a_run_recorded_with_the_former_jit_compile_string_resumes(recorded, jit_compile):
    saved = dataclasses.asdict(TrainConfig(jit_compile=jit_compile))
    saved['jit_compile'] = recorded
    assert config.changed_flags(saved, TrainConfig(jit_compile=jit_compile)) == []
    other = {None: True, True: False, False: None}[jit_compile]
    assert config.changed_flags(saved, TrainConfig(jit_compile=other)) == [
        ('jit_compile', jit_compile, other)]


def test_shared_defaults_are_the_same_everywhere():
    assert (ConvertConfig().output_dir == InputConfig().records_dir
            == EvaluateConfig().records_dir == BenchmarkConfig().records_dir)
    assert TrainConfig().model_dir == EvaluateConfig().model_dir
    assert InputConfig().batch_size == EvaluateConfig().batch_size == BenchmarkConfig().batch_size


@pytest.mark.parametrize('suite, repeats', [('convert', 1), ('train', 3), ('input', 3)])
def test_each_benchmark_suite_has_its_runs_per_measurement(suite, repeats):
    assert BenchmarkConfig(suite=suite).runs_per_measurement() == repeats
    assert BenchmarkConfig(suite=suite, repeats=5).runs_per_measurement() == 5
