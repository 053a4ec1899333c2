"""A killed run, resumed, ends with exactly the weights of an uninterrupted one.

Real processes of scripts/train.py with --deterministic, killed by SIGKILL at
chosen points through the test-only hook of `cifar_tfrecord.faults` (no
sleeps): each kill must land where it was asked, or the test fails. Each
chain of kills and reruns is compared with one uninterrupted run of the same
flags: final weights bit for bit, and the history's loss columns.

The chains together cover: mid-epoch and between epochs, in the freeze
phase and in the fine-tune phase, inside a save, --freeze_epochs=0 and 1,
--weights=none and a weights file (each with --freeze_epochs=0), the memory
cache and --cache=PATH (each with a weights file), float32 and mixed
bfloat16, each optimizer with weight decay (sgd, adamw as the CPU recipes
train, rmsprop). tests/test_launch.py resumes two workers.
"""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from cifar_tfrecord import faults
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import run_folder
from conftest import REPOSITORY, SMALL_TRAINING, read_history

# Kill-and-rerun runs of the trainer: the full suite only.
pytestmark = pytest.mark.slow

_LOSS_COLUMNS = ('epoch', 'phase', 'loss', 'accuracy', 'val_loss', 'val_accuracy')


@pytest.fixture(scope='module')
def backbone_weights(tmp_path_factory):
    """A weights file of a ResNet50 backbone at 32 px, random but seeded."""
    keras.utils.set_random_seed(11)
    path = str(tmp_path_factory.mktemp('weights') / 'backbone.weights.h5')
    model_lib.build_backbone('none', 32).save_weights(path)
    return path


def _train(model_dir, flags, kill_at=None):
    """scripts/train.py in a process (and session) of its own, killed where
    `kill_at` says: faults.kill_at's arguments."""
    environment = dict(os.environ)
    environment.pop(faults.ENVIRONMENT_VARIABLE, None)
    if kill_at:
        environment.update(faults.kill_at(*kill_at))
    return subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, 'scripts', 'train.py'),
         f'--model_dir={model_dir}', *flags],
        capture_output=True, text=True, env=environment, start_new_session=True)


def _killed(model_dir, flags, point, count):
    result = _train(model_dir, flags, (point, count))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    # Killed there, and nowhere else.
    assert f'{faults.KILLED_MESSAGE} {point}:{count}\n' in result.stderr
    return result


def _completed(model_dir, flags):
    result = _train(model_dir, flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _weights(model_dir):
    model = keras.saving.load_model(
        str(model_dir / run_folder.FINAL_MODEL), safe_mode=True, compile=False)
    return model.get_weights()


def _assert_same_run(resumed_dir, reference_dir):
    resumed, reference = _weights(resumed_dir), _weights(reference_dir)
    assert len(resumed) == len(reference)
    for index, (got, expected) in enumerate(zip(resumed, reference)):
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected), f'weight {index} differs'
    rows = [[row[column] for column in _LOSS_COLUMNS] for row in read_history(resumed_dir)]
    assert rows == [[row[column] for column in _LOSS_COLUMNS]
                    for row in read_history(reference_dir)]


def _flags(records_dir, *extra):
    return [f'--records_dir={records_dir}', *SMALL_TRAINING, '--steps_per_epoch=2',
            '--mixed_precision=float32', '--deterministic', '--noexport_saved_model', *extra]


def test_pretrained_two_phases_resume_exactly_after_kills_anywhere(
        sample_records, backbone_weights, tmp_path):
    # One freeze epoch (training steps 1-2), two fine-tuning epochs (3-6);
    # the weights file replaces SMALL_TRAINING's --weights=none.
    flags = _flags(sample_records, f'--weights={backbone_weights}', '--freeze_epochs=1',
                   '--fine_tune_epochs=2', '--weight_decay=0.01')
    _completed(tmp_path / 'reference', flags)

    run = tmp_path / 'run'
    _killed(run, flags, 'train_step', 1)       # Mid-epoch, freeze phase: nothing saved.
    # The second file written whole but not renamed (best.keras of epoch 1;
    # the first is config.json).
    _killed(run, flags, 'inside_save', 2)
    _killed(run, flags, 'backup_written', 1)   # A backup that state.json does not name.
    assert not (run / run_folder.STATE).exists()
    _killed(run, flags, 'epoch_saved', 1)      # Between the phases.
    # The rerun starts at epoch 2: its step 3 is mid-epoch 3, fine-tuning,
    # after a backup that holds the fine-tuning optimizer's state.
    _killed(run, flags, 'train_step', 3)
    result = _completed(run, flags)
    assert 'Resuming after epoch 2' in result.stderr
    _assert_same_run(run, tmp_path / 'reference')
    assert [int(row['epoch']) for row in read_history(run)] == [1, 2, 3]


def test_from_scratch_in_bfloat16_with_a_file_cache_resumes_exactly(sample_records, tmp_path):
    flags = _flags(sample_records, '--freeze_epochs=0', '--fine_tune_epochs=3',
                   f'--cache={tmp_path / "cache" / "images"}', '--mixed_precision=mixed_bfloat16',
                   '--optimizer=adamw', '--weight_decay=0.05')
    _completed(tmp_path / 'reference', flags)

    run = tmp_path / 'run'
    _killed(run, flags, 'train_step', 3)       # Mid-epoch 2, with the file cache half written.
    # Ctrl-C right after epoch 2: one line says what is kept, nothing half written.
    result = _train(run, flags, ('epoch_saved', 1, None, 'SIGINT'))
    assert result.returncode == 130, result.stderr[-3000:]
    assert 'Resuming after epoch 1' in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f'interrupted: {run} keeps its 2 finished epochs; rerun the same command to resume')
    assert 'Traceback' not in result.stderr + result.stdout
    assert not [path for path in run.rglob('*') if '.partial' in path.name]
    result = _completed(run, flags)
    assert 'Resuming after epoch 2' in result.stderr
    _assert_same_run(run, tmp_path / 'reference')


def test_fine_tuning_a_weights_file_without_a_freeze_phase_resumes_exactly(
        sample_records, backbone_weights, tmp_path):
    # The pairs the two chains above leave out: a weights file with
    # --freeze_epochs=0, and a weights file with --cache=PATH.
    flags = _flags(sample_records, f'--weights={backbone_weights}', '--freeze_epochs=0',
                   '--fine_tune_epochs=2', f'--cache={tmp_path / "cache" / "images"}',
                   '--optimizer=rmsprop', '--weight_decay=0.01')
    _completed(tmp_path / 'reference', flags)

    run = tmp_path / 'run'
    _killed(run, flags, 'train_step', 3)       # Mid-epoch 2, after the backup of epoch 1.
    result = _completed(run, flags)
    assert 'Resuming after epoch 1' in result.stderr
    _assert_same_run(run, tmp_path / 'reference')


def test_a_finished_run_rerun_does_nothing(sample_records, tmp_path):
    # Not deterministic, one short epoch: the rerun must not train again.
    flags = [f'--records_dir={sample_records}', *SMALL_TRAINING, '--steps_per_epoch=1',
             '--freeze_epochs=0', '--fine_tune_epochs=1', '--mixed_precision=float32',
             '--noexport_saved_model']
    _completed(tmp_path / 'run', flags)
    before = {name: os.stat(tmp_path / 'run' / name).st_mtime_ns
              for name in os.listdir(tmp_path / 'run')}
    result = _completed(tmp_path / 'run', flags)
    assert 'finished already; nothing to do' in result.stderr
    assert 'Epoch 1/1' not in result.stdout
    assert {name: os.stat(tmp_path / 'run' / name).st_mtime_ns
            for name in os.listdir(tmp_path / 'run')} == before
