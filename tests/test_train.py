"""The trainer, through scripts/train.py, evaluate.py and predict.py.

ResNet50 with random weights at 32 px and tiny batches: the real model and
the real code paths, at a size that runs in seconds per step on a CPU.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import evaluate
from cifar_tfrecord import records
from cifar_tfrecord import train
from cifar_tfrecord.config import TrainConfig
from conftest import REPOSITORY, run_script

SMALL = ['--weights=none', '--image_size=32', '--batch_size=8', '--head_units=16',
         '--warmup_epochs=0']


@pytest.fixture(autouse=True)
def _reset_precision():
    yield
    keras.mixed_precision.set_global_policy('float32')


@pytest.fixture(scope='module')
def trained_run(sample_records, tmp_path_factory):
    """One short run: two replicas, mixed bfloat16, both phases."""
    model_dir = str(tmp_path_factory.mktemp('run') / 'run')
    status = run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                        *SMALL, '--strategy=mirrored', '--mixed_precision=mixed_bfloat16',
                        '--freeze_epochs=1', '--fine_tune_epochs=1', '--steps_per_epoch=2',
                        '--batch_norm_momentum=0.8')
    keras.mixed_precision.set_global_policy('float32')
    assert status == 0
    return model_dir


def _history(model_dir):
    with open(os.path.join(model_dir, 'history.csv')) as file:
        return list(csv.DictReader(file))


def test_a_run_writes_every_output(trained_run):
    for name in ('config.json', 'history.csv', 'logs', 'best.keras', 'final.keras',
                 'saved_model', 'metrics.json', 'predictions.npz'):
        assert os.path.exists(os.path.join(trained_run, name)), name
    assert not os.path.exists(os.path.join(trained_run, 'backup'))
    history = _history(trained_run)
    assert [(row['epoch'], row['phase']) for row in history] == [('1', 'freeze'),
                                                                ('2', 'fine_tune')]
    for row in history:
        for column in ('loss', 'accuracy', 'val_loss', 'val_accuracy', 'learning_rate',
                       'images_per_second', 'epoch_seconds'):
            assert float(row[column]) >= 0, column


def test_two_replicas_and_bfloat16_were_used(trained_run):
    with open(os.path.join(trained_run, 'config.json')) as file:
        config = json.load(file)
    assert config['resolved'] == {'mixed_precision': 'mixed_bfloat16',
                                  'strategy': 'MirroredStrategy', 'replicas': 2}
    assert config['config']['input']['batch_size'] == 8
    assert config['versions']['tensorflow'] == tf.__version__


def test_metrics_cover_the_validation_split(trained_run, sample_records):
    with open(os.path.join(trained_run, 'metrics.json')) as file:
        metrics = json.load(file)
    assert metrics['split'] == 'validation'  # The sample's test set is unlabelled.
    assert metrics['examples'] == 20
    confusion = np.array(metrics['confusion_matrix'])
    assert confusion.shape == (10, 10) and confusion.sum() == 20
    assert metrics['accuracy'] == pytest.approx(np.trace(confusion) / 20)
    assert set(metrics['per_class_accuracy']) == set(records.CLASS_NAMES)
    predictions = np.load(os.path.join(trained_run, 'predictions.npz'))
    assert predictions['images'].shape == (20, 32, 32, 3)
    assert predictions['probabilities'].shape == (20, 10)


def test_saved_model_takes_raw_images_and_matches_keras(trained_run, sample_records):
    images = np.stack([image for _, image, _ in records.read_split(sample_records, 'test')])
    keras_model = evaluate.load_serving_model(os.path.join(trained_run, 'final.keras'))
    exported = tf.saved_model.load(os.path.join(trained_run, 'saved_model'))
    expected = keras_model.predict(images, verbose=0)
    served = exported.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, expected, atol=2e-2)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-3)


def test_best_checkpoint_loads_in_safe_mode(trained_run):
    model = keras.saving.load_model(os.path.join(trained_run, 'best.keras'), safe_mode=True)
    assert model.inputs[0].dtype == 'uint8'
    backbone = model.get_layer('resnet50')
    norms = [layer for layer in [*backbone.layers, model.get_layer('head_norm')]
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.8 for layer in norms)  # --batch_norm_momentum


def test_evaluate_script_writes_metrics(trained_run, sample_records, tmp_path):
    output = tmp_path / 'metrics.json'
    assert run_script('evaluate', f'--model_dir={trained_run}', f'--records_dir={sample_records}',
                      '--split=train', f'--output={output}') == 0
    metrics = json.loads(output.read_text())
    assert metrics['split'] == 'train' and metrics['examples'] == 60


def test_predict_script_writes_a_kaggle_submission(trained_run, sample_records, tmp_path):
    output = tmp_path / 'submission.csv'
    assert run_script('predict', f'--model_dir={trained_run}', f'--records_dir={sample_records}',
                      f'--output={output}') == 0
    lines = output.read_text().splitlines()
    assert lines[0] == 'id,label'
    rows = [line.split(',') for line in lines[1:]]
    assert [int(image_id) for image_id, _ in rows] == list(range(1, 13))
    assert all(label in records.CLASS_NAMES for _, label in rows)


# ----------------------------------------------------------------------------
# Killed and resumed: a real process, killed in the middle of an epoch.

# scripts/train.py with one more callback, which SIGKILLs the process after
# the second step of its third epoch: mid-epoch, at the same point every run.
_TRAIN_KILLED_MID_EPOCH = """
import os, runpy, signal, sys
import keras
from cifar_tfrecord import callbacks

class KillMidEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 2 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

make_callbacks = callbacks.make_callbacks
callbacks.make_callbacks = lambda *args, **kwargs: make_callbacks(*args, **kwargs) + [
    KillMidEpoch()]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _train_arguments(records_dir, model_dir):
    return [os.path.join(REPOSITORY, 'scripts', 'train.py'),
            f'--records_dir={records_dir}', f'--model_dir={model_dir}', *SMALL,
            '--freeze_epochs=1', '--fine_tune_epochs=2', '--steps_per_epoch=4',
            '--mixed_precision=float32']


def test_run_killed_mid_epoch_resumes_to_the_requested_epochs(sample_records, tmp_path):
    model_dir = tmp_path / 'run'
    arguments = _train_arguments(sample_records, model_dir)
    killed = subprocess.run([sys.executable, '-c', _TRAIN_KILLED_MID_EPOCH, *arguments],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [int(row['epoch']) for row in _history(model_dir)] == [1, 2]
    assert not (model_dir / 'final.keras').exists()
    best_before = json.loads((model_dir / 'best.json').read_text())
    assert (model_dir / 'best.keras').exists()

    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # Resumed from the backup of epoch 2: only epoch 3 was trained again.
    assert 'Epoch 3/3' in result.stdout and 'Epoch 2/3' not in result.stdout
    history = _history(model_dir)
    assert [int(row['epoch']) for row in history] == [1, 2, 3]
    assert [row['phase'] for row in history] == ['freeze', 'fine_tune', 'fine_tune']
    best_after = json.loads((model_dir / 'best.json').read_text())
    assert best_after['val_accuracy'] >= best_before['val_accuracy']
    evaluate.load_serving_model(str(model_dir / 'best.keras'))  # Whole and loadable.
    assert (model_dir / 'final.keras').exists()


# ----------------------------------------------------------------------------
# Remote storage: TensorFlow's in-memory file system stands in for gs://.


def test_convert_train_and_plot_on_a_remote_file_system(tmp_path, monkeypatch):
    # ram:// lives in this process: every step runs here, not as a command.
    root = f'ram://{tmp_path.name}'
    monkeypatch.chdir(tmp_path)  # Anything written locally by mistake lands here.
    assert run_script('convert', '--source=sample', f'--output_dir={root}/records',
                      '--sample_images_per_class=8', '--sample_test_images=12',
                      '--num_shards=4', '--validation_fraction=0.25') == 0
    assert run_script('convert', '--verify', f'--output_dir={root}/records') == 0
    assert run_script('train', f'--records_dir={root}/records', f'--model_dir={root}/run',
                      *SMALL, '--freeze_epochs=1', '--fine_tune_epochs=0',
                      '--steps_per_epoch=2', '--mixed_precision=float32') == 0
    assert sorted(tf.io.gfile.listdir(f'{root}/run')) == [
        'best.json', 'best.keras', 'config.json', 'final.keras', 'history.csv', 'logs',
        'metrics.json', 'predictions.npz', 'saved_model', 'state.json']
    assert run_script('plot', f'--model_dir={root}/run', f'--output_dir={root}/plots') == 0
    figures = sorted(tf.io.gfile.listdir(f'{root}/plots'))
    assert figures == ['accuracy.png', 'confusion_matrix.png', 'learning_rate.png', 'loss.png',
                       'per_class_accuracy.png', 'samples.png']
    for name in figures:
        with tf.io.gfile.GFile(f'{root}/plots/{name}', 'rb') as file:
            assert file.read(8) == records.PNG_SIGNATURE
    exported = tf.saved_model.load(f'{root}/run/saved_model')
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert exported.serve(tf.constant(images)).shape == (2, 10)
    assert os.listdir(tmp_path) == []


def test_validation_accuracy_ignores_examples_of_weight_zero():
    # Distributed validation pads with such examples: they must not count.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(10, activation='softmax')])
    config = TrainConfig(weights='none', fine_tune_epochs=1)
    train.compile_model(model, config, 'fine_tune', steps_per_epoch=1, epochs=1,
                        jit_compile=False)
    inputs = np.eye(3, dtype=np.float32)[:2]
    predicted = model.predict(inputs, verbose=0).argmax(axis=1)
    targets = np.eye(10, dtype=np.float32)[[predicted[0], (predicted[1] + 1) % 10]]
    logs = model.evaluate(inputs, targets, sample_weight=np.array([1.0, 0.0]), verbose=0,
                          return_dict=True)
    assert logs['accuracy'] == 1.0


# ----------------------------------------------------------------------------
# Bad input: refused before anything is written.


@pytest.mark.parametrize('flags, message', [
    (['--batch_size=9', '--strategy=mirrored'], '--batch_size=9 does not divide evenly over 2'),
    (['--weights=/nowhere/weights.h5'], '--weights=/nowhere/weights.h5: no such file'),
    (['--image_size=16'], '--image_size=16: must be at least 32'),
    (['--image_size=100', '--upsample_method=repeat'], 'multiple of 32'),
    (['--freeze_epochs=0', '--fine_tune_epochs=0'], 'epochs must not be negative, and one'),
    (['--fine_tune_epochs=-1'], 'epochs must not be negative'),
    (['--batch_norm_momentum=1.5'], '--batch_norm_momentum=1.5: must be in [0, 1)'),
])
def test_bad_input_is_refused_before_training(sample_records, tmp_path, capsys, flags, message):
    model_dir = tmp_path / 'run'
    arguments = [f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                 '--weights=none', '--image_size=32', '--batch_size=8', *flags]
    assert run_script('train', *arguments) == 1
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not model_dir.exists()


def test_records_without_manifest_are_refused(tmp_path, capsys):
    assert run_script('train', f'--records_dir={tmp_path}', f'--model_dir={tmp_path / "run"}',
                      '--weights=none') == 1
    assert 'manifest.json not found' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()
