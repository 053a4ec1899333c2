"""Evaluation and submission through scripts/evaluate.py and scripts/predict.py.

No training: the run folder is built directly, the real model with random
weights saved as final.keras and, with another output layer, as best.keras,
beside a config.json in the trainer's format. Expected results are the saved
models' own predictions on the records, computed here without the code
under test.
"""

import dataclasses
import json
import logging
import os
import shutil
import types

import keras
import numpy as np
import pytest

from cifar_tfrecord import convert
from cifar_tfrecord import evaluate
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import plots
from cifar_tfrecord import records
from cifar_tfrecord.config import ConvertConfig, InputConfig, TrainConfig
from cifar_tfrecord.errors import UserInputError
from conftest import run_script

MODEL_FILES = ('final.keras', 'best.keras')
VALIDATION_IMAGES = 20  # The sample records: 2 per class.
TEST_IMAGES = 12


def write_run_config(run, records_dir, **records_entry):
    """config.json as the trainer writes it; `records_entry` overrides its "records"."""
    manifest = records.load_manifest(records_dir)
    train_config = TrainConfig(model_dir=str(run),
                               input=InputConfig(records_dir=records_dir, image_size=32))
    entry = {'fingerprint': manifest.fingerprint(), 'class_names': list(manifest.class_names),
             'records_dir': records_dir}
    entry.update(records_entry)
    content = {'config': dataclasses.asdict(train_config), 'records': entry}
    (run / 'config.json').write_text(json.dumps(content, indent=2))


def split_arrays(records_dir, split):
    """(ids, images, labels) of a split, in the records' order."""
    ids, images, labels = zip(*records.read_split(records_dir, split))
    return list(ids), np.stack(images), np.array(labels)


@pytest.fixture(scope='module')
def saved_run(sample_records, tmp_path_factory):
    """A run folder as training leaves it, and each model's probabilities.

    The trainer's metrics.json and predictions.npz hold placeholder bytes:
    whatever the scripts do, they must stay as they are.
    """
    run = tmp_path_factory.mktemp('evaluate') / 'run'
    run.mkdir()
    _, validation_images, validation_labels = split_arrays(sample_records, 'validation')
    test_ids, test_images, _ = split_arrays(sample_records, 'test')
    keras.utils.set_random_seed(1)
    model = model_lib.build_model(weights='none', image_size=32, preprocess=True, head_units=16)
    probabilities = {}
    for seed, name in enumerate(MODEL_FILES):
        # Each model its own output layer: one build of ResNet50 serves both.
        output_layer = model.layers[-1]
        kernel, bias = output_layer.get_weights()
        random = np.random.default_rng(seed)
        output_layer.set_weights([random.normal(0, 0.5, kernel.shape), bias])
        model.save(str(run / name))
        # One call for both splits: each new batch shape would trace the model again.
        both = model.predict(np.concatenate([validation_images, test_images]), verbose=0)
        probabilities[name] = {'validation': both[:len(validation_images)],
                               'test': both[len(validation_images):]}
    write_run_config(run, sample_records)
    (run / 'metrics.json').write_text('the trainer\'s metrics')
    (run / 'predictions.npz').write_bytes(b'the trainer\'s predictions')
    return types.SimpleNamespace(path=run, records_dir=sample_records, labels=validation_labels,
                                 test_ids=test_ids, probabilities=probabilities)


def expected_loss(probabilities, labels) -> float:
    chosen = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(chosen, 1e-7, 1.0))))


def listing(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]


def test_the_two_models_predict_differently(saved_run):
    """Otherwise no test here could tell which model a script used."""
    final, best = (saved_run.probabilities[name]['validation'] for name in MODEL_FILES)
    assert expected_loss(final, saved_run.labels) != pytest.approx(
        expected_loss(best, saved_run.labels), rel=1e-3)


# ----------------------------------------------------------------------------
# scripts/evaluate.py: which model, and files that say so.


@pytest.mark.parametrize('model_flag, label, model_file', [
    ([], 'final', 'final.keras'),                      # The default: the run's model.
    (['--model=best'], 'best', 'best.keras'),
    (['--model=PATH'], 'candidate', 'best.keras'),     # PATH: a link to best.keras elsewhere.
])
def test_evaluate_writes_the_named_models_metrics_and_predictions(
        saved_run, tmp_path, model_flag, label, model_file):
    run = saved_run.path
    candidate = tmp_path / 'candidate.keras'
    os.symlink(run / 'best.keras', candidate)
    model_flag = [flag.replace('PATH', str(candidate)) for flag in model_flag]
    trainer_files = {name: (run / name).read_bytes()
                     for name in ('metrics.json', 'predictions.npz')}
    assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      *model_flag) == 0
    expected = saved_run.probabilities[model_file]['validation']
    recorded_name = str(candidate) if label == 'candidate' else model_file
    metrics = json.loads((run / f'metrics-{label}-validation.json').read_text())
    assert (metrics['model'], metrics['split']) == (recorded_name, 'validation')
    assert metrics['examples'] == VALIDATION_IMAGES
    assert metrics['loss'] == pytest.approx(expected_loss(expected, saved_run.labels), rel=1e-4)
    assert metrics['accuracy'] == pytest.approx(
        np.mean(expected.argmax(axis=1) == saved_run.labels))
    with np.load(run / f'predictions-{label}-validation.npz') as predictions:
        assert (str(predictions['model']), str(predictions['split'])) == (
            recorded_name, 'validation')
        np.testing.assert_allclose(predictions['probabilities'], expected, rtol=1e-4, atol=1e-6)
        assert predictions['labels'].tolist() == saved_run.labels.tolist()
    for name, content in trainer_files.items():
        assert (run / name).read_bytes() == content, f'evaluate.py overwrote {name}'
    assert_plots_name(run, label, f'{recorded_name} on validation, {VALIDATION_IMAGES} images')


def assert_plots_name(run, label, described):
    """The plots read evaluate.py's files and title their figures with model and split."""
    metrics = plots.load_metrics(str(run / f'metrics-{label}-validation.json'))
    predictions = plots.load_predictions(str(run / f'predictions-{label}-validation.npz'))
    assert described in plots.plot_confusion_matrix(metrics).axes[0].get_title()
    assert described in plots.plot_per_class_accuracy(metrics).axes[0].get_title()
    assert described in plots.plot_samples(predictions, columns=2, rows=1).get_suptitle()


@pytest.mark.parametrize('output_flag', ['--output', '--predictions_output'])
@pytest.mark.parametrize('trainer_file', ['metrics.json', 'predictions.npz'])
def test_evaluate_refuses_to_overwrite_the_trainers_files(saved_run, capsys, output_flag,
                                                         trainer_file):
    run = saved_run.path
    before = listing(run)
    assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      f'{output_flag}={run / trainer_file}') == 1
    [error] = error_lines(capsys)
    assert f'{run / trainer_file} is the trainer\'s {trainer_file}' in error
    assert listing(run) == before


# ----------------------------------------------------------------------------
# scripts/predict.py.


def test_predict_writes_the_final_models_submission_into_the_run(saved_run, capsys):
    run = saved_run.path
    assert run_script('predict', f'--model_dir={run}',
                      f'--records_dir={saved_run.records_dir}') == 0
    path = run / 'submission-final.csv'
    assert f'wrote {path}' in capsys.readouterr().out
    lines = path.read_text().splitlines()
    assert lines[0] == 'id,label'
    rows = [line.split(',') for line in lines[1:]]
    assert [int(image_id) for image_id, _ in rows] == list(range(1, TEST_IMAGES + 1))
    expected_classes = saved_run.probabilities['final.keras']['test'].argmax(axis=1)
    by_id = dict(zip(saved_run.test_ids,
                     (records.CLASS_NAMES[index] for index in expected_classes)))
    assert [label for _, label in rows] == [by_id[image_id] for image_id, _ in rows]


# ----------------------------------------------------------------------------
# Records that do not match the model.


@pytest.fixture(scope='module')
def renamed_class_records(sample_records, tmp_path_factory):
    """The sample records, with a manifest naming one class otherwise."""
    folder = tmp_path_factory.mktemp('renamed') / 'records'
    shutil.copytree(sample_records, folder)
    manifest = json.loads((folder / 'manifest.json').read_text())
    manifest['class_names'] = ['aeroplane', *manifest['class_names'][1:]]
    (folder / 'manifest.json').write_text(json.dumps(manifest))
    return str(folder)


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
def test_records_of_other_classes_are_refused(saved_run, renamed_class_records, capsys, script):
    run = saved_run.path
    before = listing(run)
    assert run_script(script, f'--model_dir={run}',
                      f'--records_dir={renamed_class_records}') == 1
    [error] = error_lines(capsys)
    assert renamed_class_records in error
    assert str(['aeroplane', *records.CLASS_NAMES[1:]]) in error
    assert str(list(records.CLASS_NAMES)) in error
    assert listing(run) == before


def test_other_records_of_the_same_classes_warn_and_evaluate(saved_run, tmp_path, caplog):
    """Evaluated with a warning; written where told, and nothing in the run folder."""
    other_records = str(tmp_path / 'other_records')
    convert.convert(ConvertConfig(
        source='sample', output_dir=other_records, sample_images_per_class=8,
        sample_test_images=TEST_IMAGES, num_shards=4, validation_fraction=0.25, seed=1))
    run = saved_run.path
    trained_on = records.load_manifest(saved_run.records_dir).fingerprint()
    given = records.load_manifest(other_records).fingerprint()
    assert trained_on != given
    before = listing(run)
    metrics_path, predictions_path = tmp_path / 'out' / 'metrics.json', tmp_path / 'p.npz'
    with caplog.at_level(logging.WARNING):
        assert run_script('evaluate', f'--model_dir={run}', f'--records_dir={other_records}',
                          f'--output={metrics_path}',
                          f'--predictions_output={predictions_path}') == 0
    [warning] = [record.getMessage() for record in caplog.records
                 if record.levelno == logging.WARNING and 'other records' in record.getMessage()]
    for part in (trained_on[:12], given[:12], saved_run.records_dir, other_records):
        assert part in warning
    metrics = json.loads(metrics_path.read_text())
    assert (metrics['model'], metrics['split']) == ('final.keras', 'validation')
    assert metrics['examples'] == VALIDATION_IMAGES
    with np.load(predictions_path) as predictions:
        assert str(predictions['model']) == 'final.keras'
    assert listing(run) == before


def test_runs_from_before_the_records_were_recorded_are_not_checked(
        saved_run, renamed_class_records, tmp_path, caplog):
    run = tmp_path / 'old_run'
    run.mkdir()
    os.symlink(saved_run.path / 'final.keras', run / 'final.keras')
    config = json.loads((saved_run.path / 'config.json').read_text())
    del config['records']
    (run / 'config.json').write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        evaluate.check_records(str(run / 'final.keras'), renamed_class_records)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    # The same run with the key refuses those records.
    write_run_config(run, saved_run.records_dir)
    with pytest.raises(UserInputError, match='aeroplane'):
        evaluate.check_records(str(run / 'final.keras'), renamed_class_records)


# ----------------------------------------------------------------------------
# A missing run folder or model.


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
def test_missing_run_folder_is_named(saved_run, tmp_path, capsys, script):
    missing = tmp_path / 'no_such_run'
    assert run_script(script, f'--model_dir={missing}',
                      f'--records_dir={saved_run.records_dir}') == 1
    assert error_lines(capsys) == [f'error: {missing}: no such run folder']
    assert not missing.exists()


@pytest.mark.parametrize('script', ['evaluate', 'predict'])
@pytest.mark.parametrize('model_flag, missing_file', [
    ([], 'final.keras'), (['--model=best'], 'best.keras')])
def test_missing_model_file_is_named(saved_run, tmp_path, capsys, script, model_flag,
                                     missing_file):
    run = tmp_path / 'unfinished_run'
    run.mkdir()
    other = {'final.keras': 'best.keras', 'best.keras': 'final.keras'}[missing_file]
    os.symlink(saved_run.path / other, run / other)
    assert run_script(script, f'--model_dir={run}', f'--records_dir={saved_run.records_dir}',
                      *model_flag) == 1
    assert error_lines(capsys) == [f'error: {run} has no {missing_file}']
    assert sorted(os.listdir(run)) == [other]


def test_missing_model_path_is_named(saved_run, tmp_path, capsys):
    missing = tmp_path / 'nowhere.keras'
    assert run_script('evaluate', f'--model_dir={saved_run.path}',
                      f'--records_dir={saved_run.records_dir}', f'--model={missing}') == 1
    assert error_lines(capsys) == [f'error: --model={missing}: no such model file']
