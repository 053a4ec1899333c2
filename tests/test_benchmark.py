"""scripts/benchmark.py: every suite runs and reports against its baseline.

Only that the measurements run and are reported is checked here, on tiny
inputs; their figures mean nothing at this size, and no test judges speed.
"""

import json
import sys

import pytest

from cifar_tfrecord import benchmark
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
    output = tmp_path / 'results.json'
    flags = {'convert': [f'--data_dir={kaggle_zip}'],
             'input': ['--batch_size=10'],
             'data_service': ['--batch_size=10', '--service_workers=1'],
             'train': ['--batch_size=4', '--steps=1']}[suite]
    assert run_script('benchmark', f'--suite={suite}', f'--records_dir={sample_records}',
                      '--repeats=1', f'--output_json={output}', *flags) == 0
    results = json.loads(output.read_text())['results']
    if suite == 'train':  # The verdict of the GPU user's checklist.
        assert 'fed from the records at ' in capsys.readouterr().out
    assert {result['name']: result['baseline'] for result in results} == SUITES[suite]
    for result in results:
        assert result['images_per_second'] > 0 and result['images'] > 0
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
