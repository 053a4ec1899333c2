"""scripts/benchmark.py: every suite runs and reports against its baseline.

Only that the measurements run and are reported is checked here, on tiny
inputs; their figures mean nothing at this size, and no test judges speed.
"""

import json
import sys

import pytest

from cifar_tfrecord import benchmark
from cifar_tfrecord import convert
from cifar_tfrecord.config import ConvertConfig
from conftest import run_script

SUITES = {
    'convert': {'decompress_7z': None, 'convert_zip': 'decompress_7z',
                'pil_loop_extracted': None, 'convert_extracted_raw': 'pil_loop_extracted',
                'convert_extracted_png': 'pil_loop_extracted', 'decompress_7z_process': None,
                'convert_zip_process': 'decompress_7z_process'},
    'input': {'in_memory': None, 'naive_per_example': None,
              'pipeline_cold': 'naive_per_example', 'naive_per_example_host_normalize': None,
              'pipeline_cold_host_normalize': 'naive_per_example_host_normalize',
              'pipeline_warm': 'in_memory',
              'pipeline_warm_augmented': 'in_memory', 'pipeline_host_upsample_224': 'in_memory',
              'stage_1_read': None, 'stage_2_parse_decode': None,
              'stage_3_cache_shuffle_batch': None, 'stage_4_augment': None,
              'stage_5_normalize_one_hot': None, 'stage_6_upsample_224': None},
    'data_service': {'pipeline_in_process': None,
                     'data_service_1_workers': 'pipeline_in_process'},
    'train': {'train_synthetic': None, 'train_pipeline': 'train_synthetic'},
}

# Entries run in processes of their own, whose peak memory is measured.
MEMORY_ENTRIES = {'decompress_7z_process', 'convert_zip_process'}


@pytest.mark.slow
@pytest.mark.parametrize('suite', sorted(SUITES))
def test_each_suite_reports_every_entry_against_its_baseline(suite, sample_records, kaggle_zip,
                                                             tmp_path, capsys):
    if suite == 'train':  # Enough images for a batch of each recipe it starts.
        sample_records = str(tmp_path / 'records')
        convert.convert(ConvertConfig(source='sample', output_dir=sample_records,
                                      sample_images_per_class=16, sample_test_images=10,
                                      num_shards=2))
    output = tmp_path / 'results.json'
    flags = {'convert': [f'--data_dir={kaggle_zip}'],
             'input': ['--batch_size=10'],
             'data_service': ['--batch_size=10', '--service_workers=1'],
             'train': ['--batch_size=4', '--steps=1']}[suite]
    repeats = 1 if suite == 'train' else 2  # The train suite starts two trainers a repeat.
    assert run_script('benchmark', f'--suite={suite}', f'--records_dir={sample_records}',
                      f'--repeats={repeats}', f'--output_json={output}', *flags) == 0
    report = json.loads(output.read_text())
    results = report['results']
    if suite == 'train':  # The verdict of the GPU user's checklist, and the start's cost.
        output_text = capsys.readouterr().out
        assert 'fed from the records at ' in output_text
        assert set(report['time_to_first_step_s']) == set(benchmark.FIRST_STEP_RECIPES)
        for recipe, first_step in report['time_to_first_step_s'].items():
            assert len(first_step['runs']) == 1 and first_step['median'] > 0
            assert f'time to first step, recipes/{recipe}.flags' in output_text
    assert {result['name']: result['baseline'] for result in results} == SUITES[suite]
    for result in results:
        assert result['images_per_second'] > 0 and result['images'] > 0
        assert len(result['runs']) == repeats
        assert result['noisy'] == (result['spread'] > benchmark.NOISY_SPREAD)
        assert (result['speedup'] is None) == (result['baseline'] is None)
        assert (result['peak_resident_bytes'] is not None) == (result['name'] in MEMORY_ENTRIES)
    if suite == 'convert':
        peaks = {result['name']: result['peak_resident_bytes'] for result in results}
        # Both import TensorFlow: hundreds of MB, not kilobytes misread as bytes.
        assert peaks['decompress_7z_process'] > 100 << 20
        assert peaks['convert_zip_process'] > 100 << 20
        assert 'peak resident memory: the converter ' in capsys.readouterr().out


def test_a_measured_process_reports_its_own_memory_not_its_parents():
    """Linux counts into a process's ru_maxrss the size of the process it was
    started from: this one, which holds TensorFlow, and here 300 MB more."""
    ballast = b'\1' * (300 << 20)  # Written, so resident.
    small = benchmark.run_measuring_memory([sys.executable, '-c', 'pass'])
    large = benchmark.run_measuring_memory(
        [sys.executable, '-c', 'ballast = b"\\1" * (200 << 20)'])
    assert small.status == large.status == 0
    assert small.peak_resident_bytes < 100 << 20
    assert 200 << 20 < large.peak_resident_bytes < len(ballast)


def test_ratios_are_of_medians_and_a_wide_spread_is_flagged():
    steady = benchmark.Result('steady', 100, (1.0, 1.05, 0.98))
    # One run twice as slow as the others: the median ignores it, the spread shows it.
    noisy = benchmark.Result('noisy', 100, (0.5, 1.0, 0.52))
    compared = benchmark.relative(noisy, steady)
    assert compared.seconds == 0.52 and compared.baseline == 'steady'
    assert compared.speedup == pytest.approx(1.0 / 0.52)
    assert compared.to_json()['noisy'] and not steady.to_json()['noisy']
    assert compared.spread == pytest.approx(0.5 / 0.52)


def test_entries_are_timed_in_turns_each_the_same_number_of_times():
    calls = []
    entries = {'base': (10, lambda: calls.append('base')),
               'other': (20, lambda: calls.append('other'))}
    results = benchmark.compare(entries, {'other': 'base'}, repeats=3)
    assert calls == ['base', 'other'] * 3
    assert [(result.name, len(result.runs), result.baseline) for result in results] == [
        ('base', 3, None), ('other', 3, 'base')]

