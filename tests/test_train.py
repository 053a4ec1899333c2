"""The trainer through scripts/train.py: on a remote file system, refusing bad
input and changed resumes, exact validation metrics, optimizers.
(tests/test_train_outputs.py checks what one run writes;
tests/test_train_resume.py, that a killed run resumes exactly.)
"""

import dataclasses
import json
import os
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import config as config_lib
from cifar_tfrecord import convert
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord import train
from cifar_tfrecord.config import ConvertConfig, InputConfig, TrainConfig
from cifar_tfrecord.errors import UserInputError
from conftest import SMALL_TRAINING, read_history, run_script


# ----------------------------------------------------------------------------
# Remote storage: TensorFlow's in-memory file system stands in for gs://.


@pytest.mark.slow
def test_convert_train_and_plot_on_a_remote_file_system(tmp_path, monkeypatch):
    # ram:// lives in this process: every step runs here, not as a command.
    root = f'ram://{tmp_path.name}'
    monkeypatch.chdir(tmp_path)  # Anything written locally by mistake lands here.
    assert run_script('convert', '--source=sample', f'--output_dir={root}/records',
                      '--sample_images_per_class=8', '--sample_test_images=12',
                      '--num_shards=4', '--validation_fraction=0.25') == 0
    assert run_script('convert', '--verify', f'--output_dir={root}/records') == 0
    assert run_script('train', f'--records_dir={root}/records', f'--model_dir={root}/run',
                      *SMALL_TRAINING, '--freeze_epochs=1', '--fine_tune_epochs=1',
                      '--steps_per_epoch=2', '--mixed_precision=float32') == 0
    # --weights=none: the freeze phase is skipped, one epoch from scratch.
    with tf.io.gfile.GFile(f'{root}/run/{run_folder.HISTORY}') as file:
        assert [line.split(',')[:2] for line in file.read().splitlines()[1:]] == [
            ['1', 'fine_tune']]
    assert sorted(tf.io.gfile.listdir(f'{root}/run')) == sorted([
        run_folder.BEST_RECORD, run_folder.BEST_MODEL, run_folder.CONFIG, run_folder.FINAL_MODEL,
        run_folder.HISTORY, run_folder.LOGS, run_folder.METRICS, run_folder.PREDICTIONS,
        run_folder.SAVED_MODEL, run_folder.STATE])
    assert run_script('plot', f'--model_dir={root}/run', f'--output_dir={root}/plots') == 0
    figures = sorted(tf.io.gfile.listdir(f'{root}/plots'))
    assert figures == ['accuracy.png', 'confusion_matrix.png', 'learning_rate.png', 'loss.png',
                       'per_class_accuracy.png', 'samples.png']
    for name in figures:
        with tf.io.gfile.GFile(f'{root}/plots/{name}', 'rb') as file:
            assert file.read(8) == records.PNG_SIGNATURE
    exported = tf.saved_model.load(f'{root}/run/{run_folder.SAVED_MODEL}')
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


def test_validation_loss_and_accuracy_count_real_examples_only(sample_records):
    # 20 validation images, 4 per replica on 2 replicas: padded to 24 with
    # examples of weight 0, which must change neither the loss nor the accuracy.
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    config = TrainConfig(input=InputConfig(records_dir=sample_records, batch_size=8,
                                           image_size=32), weights='none', fine_tune_epochs=1)
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((32, 32, 3), dtype='uint8'), keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(), keras.layers.Dense(10, activation='softmax')])
        train.compile_model(model, config, 'fine_tune', steps_per_epoch=1, epochs=1,
                            jit_compile=False)
    padded, _ = pipeline.distribute(strategy, config.input, 'validation', False)
    logs = model.evaluate(padded, verbose=0, return_dict=True)

    examples = list(records.read_split(sample_records, 'validation'))
    images = np.stack([image for _, image, _ in examples])
    labels = np.array([label for *_, label in examples])
    probabilities = model.predict(images, verbose=0).astype(np.float64)
    expected_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert logs['loss'] == pytest.approx(expected_loss, rel=1e-5)
    assert logs['accuracy'] == pytest.approx(np.mean(probabilities.argmax(axis=1) == labels))


def _fake_run_folder(model_dir, records_dir, **flags):
    """A run folder as the trainer leaves it after its first epoch, for resume checks."""
    manifest = records.load_manifest(records_dir)
    config = TrainConfig(input=InputConfig(records_dir=records_dir, image_size=32,
                                           batch_size=8), weights='none', **flags)
    run = run_folder.RunFolder(str(model_dir))
    run.prepare(start_afresh=False)
    run.write_config(train.run_config(config, manifest, 'float32', False,
                                      tf.distribute.get_strategy(), ('train.py',)))
    (model_dir / run_folder.HISTORY).write_text('epoch,phase\n1,freeze\n')
    return {path.name: path.read_bytes() for path in model_dir.iterdir()}


def _resume(config, records_dir):
    return run_folder.RunFolder(config.model_dir).resume(
        config, 'float32', False, records.load_manifest(records_dir).fingerprint())


def test_a_resume_with_changed_flags_is_refused_and_nothing_changes(sample_records, tmp_path,
                                                                   capsys):
    model_dir = tmp_path / 'run'
    before = _fake_run_folder(model_dir, sample_records, freeze_epochs=1, fine_tune_epochs=2)
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                      '--weights=none', '--image_size=32', '--batch_size=16',
                      '--freeze_epochs=1', '--fine_tune_epochs=3', '--seed=2',
                      '--mixed_precision=float32') == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f'error: {model_dir} holds a run with other settings: ')
    for change in ('--batch_size=16 (the run has 8)', '--fine_tune_epochs=3 (the run has 2)',
                   '--seed=2 (the run has 0)'):
        assert change in error
    assert '--overwrite' in error and 'freeze_epochs' not in error
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == before


def test_a_resume_on_other_records_is_refused_and_a_copy_accepted(sample_records, tmp_path):
    model_dir = tmp_path / 'run'
    _fake_run_folder(model_dir, sample_records)
    copy = tmp_path / 'copy'
    shutil.copytree(sample_records, copy)
    config = TrainConfig(input=InputConfig(records_dir=str(copy), image_size=32, batch_size=8,
                                           cache=str(tmp_path / 'cache')),
                         weights='none', model_dir=str(model_dir))
    # Another path to the same records, another cache: both leave the result alone.
    assert _resume(config, str(copy)).epochs_done == 0
    other = tmp_path / 'other'
    convert.convert(ConvertConfig(source='sample', output_dir=str(other), seed=5,
                                  sample_images_per_class=8, sample_test_images=12,
                                  num_shards=4, validation_fraction=0.25))
    with pytest.raises(UserInputError, match=f'--records_dir={other} holds other records'):
        _resume(dataclasses.replace(config, input=dataclasses.replace(
            config.input, records_dir=str(other))), str(other))


def test_a_resume_refuses_a_config_json_missing_a_key(sample_records, tmp_path):
    model_dir = tmp_path / 'run'
    _fake_run_folder(model_dir, sample_records)
    saved = json.loads((model_dir / run_folder.CONFIG).read_text())
    del saved['config']['input']['augment']  # Not to be filled in from today's default.
    (model_dir / run_folder.CONFIG).write_text(json.dumps(saved))
    config = TrainConfig(input=InputConfig(records_dir=sample_records, image_size=32,
                                           batch_size=8), weights='none',
                         model_dir=str(model_dir))
    with pytest.raises(UserInputError, match='lacks the key config.input.augment'):
        _resume(config, sample_records)


@pytest.mark.parametrize('precision, jit_compile, refused', [
    ('mixed_bfloat16', False, '--mixed_precision=auto resolves to mixed_bfloat16 here'),
    ('float32', True, '--jit_compile=auto resolves to True here'),
])
def test_a_resume_refuses_auto_resolving_otherwise(sample_records, tmp_path, precision,
                                                   jit_compile, refused):
    model_dir = tmp_path / 'run'
    _fake_run_folder(model_dir, sample_records)  # Trained in float32, without XLA.
    config = TrainConfig(input=InputConfig(records_dir=sample_records, image_size=32,
                                           batch_size=8), weights='none',
                         model_dir=str(model_dir))
    fingerprint = records.load_manifest(sample_records).fingerprint()
    assert run_folder.RunFolder(str(model_dir)).resume(
        config, 'float32', False, fingerprint).epochs_done == 0
    with pytest.raises(UserInputError, match=re.escape(refused)):
        run_folder.RunFolder(str(model_dir)).resume(config, precision, jit_compile, fingerprint)


@pytest.mark.slow
def test_overwrite_starts_afresh_and_keeps_files_that_are_not_the_runs(sample_records, tmp_path):
    model_dir = tmp_path / 'run'
    _fake_run_folder(model_dir, sample_records, freeze_epochs=3)
    (model_dir / 'metrics-best-validation.json').write_text('{}')
    (model_dir / 'notes.txt').write_text('mine')
    recipe = tmp_path / 'small.flags'
    recipe.write_text('\n'.join([*SMALL_TRAINING, '--fine_tune_epochs=3']) + '\n')
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                      f'--flagfile={recipe}', '--freeze_epochs=0', '--fine_tune_epochs=1',
                      '--steps_per_epoch=1', '--mixed_precision=float32',
                      '--noexport_saved_model', '--overwrite') == 0
    assert [row['epoch'] for row in read_history(model_dir)] == ['1']
    assert not (model_dir / 'metrics-best-validation.json').exists()
    assert (model_dir / 'notes.txt').read_text() == 'mine'
    saved = json.loads((model_dir / run_folder.CONFIG).read_text())
    assert saved['config']['freeze_epochs'] == 0 and saved['config']['overwrite'] is True
    # The recipe file, its text, and the flags given after it, which won.
    assert saved['recipe']['flagfiles'] == {str(recipe): recipe.read_text()}
    assert '--fine_tune_epochs=1' in saved['recipe']['flags']
    assert saved['config']['fine_tune_epochs'] == 1


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

