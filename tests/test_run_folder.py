"""The run folder's layout: names, and which files a run owns."""

import pytest

from cifar_tfrecord import run_folder


@pytest.mark.parametrize('name, is_run_file', [
    ('history.csv', True), ('backup/', True), ('metrics-best-validation.json', True),
    ('predictions-final-test.npz', True), ('submission-final.csv', True), ('.worker-1', True),
    ('notes.txt', False), ('metrics.txt', False), ('my_model.keras', False)])
def test_run_folder_knows_which_files_are_a_runs(name, is_run_file):
    assert run_folder.is_run_file(name) == is_run_file


def test_models_by_name_or_path():
    assert run_folder.model_path('runs/a', 'final') == 'runs/a/final.keras'
    assert run_folder.model_path('runs/a', 'best') == 'runs/a/best.keras'
    assert run_folder.model_path('runs/a', 'elsewhere/mine.keras') == 'elsewhere/mine.keras'
    assert run_folder.evaluation_metrics('runs/a', 'elsewhere/mine.keras', 'test') == (
        'runs/a/metrics-mine-test.json')
