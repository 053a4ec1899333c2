"""The trainer through scripts/train.py: killed and resumed, on a remote file
system, and refusing bad input. (tests/test_train_outputs.py checks what one
run writes.)
"""

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
from conftest import REPOSITORY, SMALL_TRAINING, read_history, run_script


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
            f'--records_dir={records_dir}', f'--model_dir={model_dir}', *SMALL_TRAINING,
            '--freeze_epochs=1', '--fine_tune_epochs=2', '--steps_per_epoch=4',
            '--mixed_precision=float32', '--noexport_saved_model']


def test_run_killed_mid_epoch_resumes_to_the_requested_epochs(sample_records, tmp_path):
    model_dir = tmp_path / 'run'
    arguments = _train_arguments(sample_records, model_dir)
    killed = subprocess.run([sys.executable, '-c', _TRAIN_KILLED_MID_EPOCH, *arguments],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [int(row['epoch']) for row in read_history(model_dir)] == [1, 2]
    assert not (model_dir / 'final.keras').exists()
    best_before = json.loads((model_dir / 'best.json').read_text())
    assert (model_dir / 'best.keras').exists()

    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # Resumed from the backup of epoch 2: only epoch 3 was trained again.
    assert 'Epoch 3/3' in result.stdout and 'Epoch 2/3' not in result.stdout
    history = read_history(model_dir)
    assert [int(row['epoch']) for row in history] == [1, 2, 3]
    assert [row['phase'] for row in history] == ['freeze', 'fine_tune', 'fine_tune']
    best_after = json.loads((model_dir / 'best.json').read_text())
    assert best_after['val_accuracy'] >= best_before['val_accuracy']
    evaluate.load_serving_model(str(model_dir / 'best.keras'))  # Whole and loadable.
    assert (model_dir / 'final.keras').exists()
    assert (model_dir / 'metrics.json').exists()
    assert not (model_dir / 'saved_model').exists()  # --noexport_saved_model


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
                      *SMALL_TRAINING, '--freeze_epochs=1', '--fine_tune_epochs=0',
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
