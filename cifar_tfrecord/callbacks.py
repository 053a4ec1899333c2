"""Callbacks and atomic file writes that make a run safe to kill and resume.

Every file a reader may open (history.csv, best.keras, state.json) is written
under a temporary name and renamed into place, so a kill never leaves half a
file behind.
"""

import csv
import dataclasses
import io
import json
import math
import os
import time

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cifar_tfrecord import errors
from cifar_tfrecord import faults
from cifar_tfrecord import json_fields
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError
from cifar_tfrecord.progress import describe_seconds

HISTORY_COLUMNS = run_folder.HISTORY_COLUMNS
_PARTIAL = '.partial'


def write_text_atomically(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path + _PARTIAL, 'w') as file:
        file.write(text)
    _publish(path + _PARTIAL, path)


def save_model_atomically(model: keras.Model, path: str) -> None:
    """The model for inference: its architecture and weights, no optimizer.

    Keras saves a compiled model's optimizer variables with it, twice the
    weights again for AdamW; resuming reads its own backup instead. A new
    Functional model of the same layers is not compiled, so it saves the
    weights alone (it shares them: nothing is copied).
    """
    # Keras insists on the .keras ending, so the temporary name keeps it.
    temporary = path[:-len('.keras')] + _PARTIAL + '.keras'
    # `input` and `output`, not the lists `inputs` and `outputs`: the model
    # saved takes what the trained one takes, a tensor (a SavedModel exported
    # from a list would ask for a list).
    keras.Model(model.input, model.output, name=model.name).save(temporary)
    _publish(temporary, path)


def save_weights_atomically(model: keras.Model, path: str) -> None:
    """The model's weights, and its optimizer's variables once compiled."""
    temporary = path[:-len('.weights.h5')] + _PARTIAL + '.weights.h5'
    model.save_weights(temporary)
    _publish(temporary, path)


def _publish(temporary: str, path: str) -> None:
    faults.reached('inside_save')  # Written whole, not yet in place.
    tf.io.gfile.rename(temporary, path, overwrite=True)


def remove_partial_files(model_dir: str) -> None:
    """Removes the temporary files of writes an interruption cut short.

    Harmless to a resumed run, which writes its own; removed so that an
    interrupted run leaves nothing half written behind.
    """
    for folder in (model_dir, run_folder.path(model_dir, run_folder.BACKUP)):
        if tf.io.gfile.isdir(folder):
            for name in tf.io.gfile.listdir(folder):
                if _PARTIAL in name:
                    tf.io.gfile.remove(os.path.join(folder, name))


# ----------------------------------------------------------------------------
# history.csv


def read_history(model_dir: str) -> list[dict]:
    """The rows of history.csv, checked (`run_folder.read_history`); none before it exists."""
    path = run_folder.path(model_dir, run_folder.HISTORY)
    if not tf.io.gfile.exists(path):
        return []
    return [row for _, row in run_folder.read_history(path)[1]]


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in history.csv, with learning rate and images/s, and
    the same row as one line on the console, with the time left for the run.

    A row replaces any row of the same or a later epoch: after a kill, the
    resumed run rewrites the epochs it redoes, so no epoch is doubled or lost.
    The Keras progress bar counts the epochs of one phase's fit; the console
    line counts the run's and names the phase.
    """

    def __init__(self, model_dir: str, phase: str, images_per_epoch: int,
                 total_epochs: int | None = None):
        super().__init__()
        self._path = run_folder.path(model_dir, run_folder.HISTORY)
        self._model_dir = model_dir
        self._phase = phase
        self._images_per_epoch = images_per_epoch
        self._total_epochs = total_epochs
        self._epoch_start = self._train_seconds = None
        self._epoch_times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        # Validation follows training within an epoch: not training speed.
        if self._epoch_start is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._epoch_start

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        epoch_seconds = time.perf_counter() - self._epoch_start
        train_seconds = self._train_seconds or epoch_seconds
        row = {
            'epoch': epoch + 1, 'phase': self._phase,
            'loss': logs.get('loss'), 'accuracy': logs.get('accuracy'),
            'val_loss': logs.get('val_loss'), 'val_accuracy': logs.get('val_accuracy'),
            'learning_rate': float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            'images_per_second': round(self._images_per_epoch / train_seconds, 1),
            'epoch_seconds': round(epoch_seconds, 2),
        }
        rows = [old for old in read_history(self._model_dir) if int(old['epoch']) < epoch + 1]
        rows.append({key: '' if value is None else value for key, value in row.items()})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(self._path, buffer.getvalue())
        self._epoch_times.append(epoch_seconds)
        logging.info('%s', self._summary(row))

    def _summary(self, row: dict) -> str:
        """One line: phase, epoch of the run, losses, accuracies, speed, time left."""
        total = self._total_epochs or row['epoch']
        measures = ', '.join(f'{name} {row[name]:.4f}' for name in (
            'loss', 'accuracy', 'val_loss', 'val_accuracy') if row[name] is not None)
        left = (total - row['epoch']) * sum(self._epoch_times) / len(self._epoch_times)
        return (f'{self._phase} epoch {row["epoch"]}/{total}: {measures}, '
                f'{row["images_per_second"]:,.0f} images/s, '
                + ('done' if left == 0 else f'about {describe_seconds(left)} left'))


class RunTimeEstimate(keras.callbacks.Callback):
    """Times the first steps of a run and says how long the whole run will take.

    On a machine without an accelerator it also warns when that is over an
    hour, and names the command that would take less: the trainer's defaults
    are a GPU recipe (224 px), about 30 times slower on a CPU than at 32 px.
    """

    def __init__(self, steps_per_epoch: int, epochs_left: int, advice: str | None):
        super().__init__()
        self._steps_per_epoch = steps_per_epoch
        self._epochs_left = epochs_left
        self._advice = advice
        self._started = None
        self._told = False

    def on_train_batch_end(self, batch, logs=None):
        # The first step traces the model; the next ones show the pace. Once:
        # the batch count starts again each epoch.
        if batch == 1 and self._started is None:
            self._started = time.perf_counter()
        elif batch == 1 + _TIMED_STEPS and self._started is not None and not self._told:
            self._told = True
            seconds = ((time.perf_counter() - self._started) / _TIMED_STEPS
                       * self._steps_per_epoch * self._epochs_left)
            logging.info('Timed %d steps: about %s for the %d epochs of this run.',
                         _TIMED_STEPS, describe_seconds(seconds), self._epochs_left)
            if self._advice and seconds > _LONG_RUN_SECONDS:
                logging.warning('That is over an hour on this machine. %s', self._advice)


_TIMED_STEPS = 5
_LONG_RUN_SECONDS = 3600


class BestCheckpoint(keras.callbacks.Callback):
    """best.keras, the model of the best val_accuracy, kept across resumes.

    best.json beside it records that accuracy, written after the model, so a
    resumed run knows what it has to beat. Every worker of a cluster reads
    it from the chief's folder: a worker's own folder starts empty.
    """

    def __init__(self, model_dir: str, chief_dir: str | None = None):
        super().__init__()
        self._model_path = run_folder.path(model_dir, run_folder.BEST_MODEL)
        self._record_path = run_folder.path(model_dir, run_folder.BEST_RECORD)
        chief_dir = chief_dir or model_dir
        self._chief_paths = (run_folder.path(chief_dir, run_folder.BEST_MODEL),
                             run_folder.path(chief_dir, run_folder.BEST_RECORD))
        self._best = -math.inf

    def on_train_begin(self, logs=None):
        self._best = -math.inf
        model_path, record_path = self._chief_paths
        if tf.io.gfile.exists(model_path) and tf.io.gfile.exists(record_path):
            self._best = read_best_record(record_path).val_accuracy

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get('val_accuracy')
        if accuracy is not None and accuracy > self._best:
            self._best = float(accuracy)
            save_model_atomically(self.model, self._model_path)
            write_text_atomically(self._record_path, json.dumps(
                dataclasses.asdict(BestRecord(self._best, epoch + 1))) + '\n')


@dataclasses.dataclass(frozen=True)
class BestRecord:
    """best.json: the val_accuracy of best.keras, and its epoch."""
    val_accuracy: float
    epoch: int


def read_best_record(path: str) -> BestRecord:
    return BestRecord(**_read_fields(path, BestRecord))


def _read_fields(path: str, fields_of) -> dict:
    """A JSON file holding `dataclasses.asdict` of a `fields_of`, checked."""
    try:
        return json_fields.check_fields(run_folder.read_json(path), fields_of)
    except json_fields.FieldError as error:
        raise UserInputError(f'{path}: {error}') from None


class EpochBackup(keras.callbacks.Callback):
    """After every epoch: the weights and optimizer state, then state.json.

    The backup of epoch k is a file of its own, and state.json, written
    after it, names it: a kill at any moment leaves state.json naming a
    whole backup (or none), never a backup of another epoch. Older backups
    go once state.json no longer names them. Random state needs no backup:
    the input and dropout of an epoch are functions of the seed and the
    epoch (`ReseedDropout`).
    """

    def __init__(self, model_dir: str, phase: str):
        super().__init__()
        self._model_dir = model_dir
        self._phase = phase

    def on_epoch_end(self, epoch, logs=None):
        name = os.path.join(run_folder.BACKUP, f'epoch-{epoch + 1:04d}.weights.h5')
        tf.io.gfile.makedirs(run_folder.path(self._model_dir, run_folder.BACKUP))
        save_weights_atomically(self.model, run_folder.path(self._model_dir, name))
        faults.reached('backup_written')
        write_state(self._model_dir, RunState(epochs_done=epoch + 1, phase=self._phase,
                                              backup=name))
        for old in tf.io.gfile.listdir(run_folder.path(self._model_dir, run_folder.BACKUP)):
            if os.path.join(run_folder.BACKUP, old) != name:
                tf.io.gfile.remove(run_folder.path(self._model_dir, os.path.join(
                    run_folder.BACKUP, old)))
        faults.reached('epoch_saved')


class ReseedDropout(keras.callbacks.Callback):
    """Seeds every Dropout layer from (seed, epoch) as each epoch begins.

    Keras keeps a dropout layer's random state in a variable that neither
    `get_weights` nor `save_weights` holds; a resumed run would replay the
    masks of the run's first epoch. Reseeded per epoch, epoch k's masks are
    the same whether or not the run was interrupted before it.
    """

    def __init__(self, seed: int):
        super().__init__()
        self._seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for index, layer in enumerate(dropout_layers(self.model)):
            # Keras reduces seeds modulo 2**31 - 2; the second half counts
            # the layer's calls within the epoch.
            start = np.random.default_rng([self._seed, index, epoch]).integers(2**31 - 2)
            state = layer.seed_generator.state
            state.assign(keras.ops.convert_to_tensor([start, 0], dtype=state.dtype))


def dropout_layers(layer: keras.layers.Layer) -> list[keras.layers.Dropout]:
    """The Dropout layers of a model that drop anything, nested models included,
    in a fixed order. (At rate 0 Keras gives a layer no random state.)"""
    return [dropout for dropout in _layers_of_type(layer, keras.layers.Dropout)
            if dropout.rate > 0]


def _layers_of_type(layer: keras.layers.Layer, layer_type: type) -> list:
    if isinstance(layer, layer_type):
        return [layer]
    return [found for inner in getattr(layer, 'layers', [])
            for found in _layers_of_type(inner, layer_type)]


class AverageMovingStatistics(keras.callbacks.Callback):
    """Averages the BatchNorm moving statistics over the replicas before validation.

    Keras 3 updates each replica's copy of a moving mean or variance from
    that replica's own images (the variables aggregate as "none"), so the
    replicas drift apart, a saved model holds one replica's statistics, and
    the workers of a job end with different weights. The moving average is
    linear in the batch statistics: averaged once an epoch, the replicas
    hold what averaging every step would have given, for one all-reduce an
    epoch instead of one per layer and step. Validation, checkpoints and
    the backup then see the same statistics on every replica.
    """

    def on_test_begin(self, logs=None):
        strategy = tf.distribute.get_strategy()
        variables = [variable for layer in batch_norm_layers(self.model) if layer.trainable
                     for variable in (layer.moving_mean, layer.moving_variance)]
        if strategy.num_replicas_in_sync == 1 or not variables:
            return
        local = strategy.run(lambda: tf.concat(
            [tf.reshape(variable.value, [-1]) for variable in variables], axis=0))
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
        parts = tf.split(mean, [int(np.prod(variable.shape)) for variable in variables])
        for variable, part in zip(variables, parts):
            variable.assign(tf.reshape(part, variable.shape))


def batch_norm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of a model, nested models included."""
    return _layers_of_type(layer, keras.layers.BatchNormalization)


class FaultPoints(keras.callbacks.Callback):
    """Tests only: lets `faults` kill the process after a chosen training step."""

    def on_train_batch_end(self, batch, logs=None):
        faults.reached('train_step')


def make_callbacks(model_dir: str, phase: str, images_per_epoch: int, seed: int,
                   chief_dir: str | None = None, total_epochs: int | None = None,
                   estimate: RunTimeEstimate | None = None) -> list:
    """The callbacks of one phase's fit, in the order they must run.

    They write into model_dir and read best.json from chief_dir (by default
    the same): a worker that is not the chief of a cluster writes a folder
    of its own, and resumes from the chief's files, as every worker does.

    At the end of an epoch the outputs are written before the backup that
    marks the epoch done: a kill in between redoes the epoch, and its row
    and checkpoint are written again rather than lost.
    """
    chief_dir = chief_dir or model_dir
    # A test's kill comes first, before the bar draws the step: its line
    # starts a line of its own.
    callbacks = [FaultPoints()] if faults.enabled() else []
    callbacks += [
        # Keras appends its own bar after these, which would end its line
        # only after HistoryCSV had logged the epoch's summary onto it.
        keras.callbacks.ProgbarLogger(),
        ReseedDropout(seed),
        AverageMovingStatistics(),
        keras.callbacks.TerminateOnNaN(),
        BestCheckpoint(model_dir, chief_dir),
        HistoryCSV(model_dir, phase, images_per_epoch, total_epochs),
        keras.callbacks.TensorBoard(run_folder.path(model_dir, run_folder.LOGS)),
        EpochBackup(model_dir, phase),
    ]
    return callbacks + ([estimate] if estimate else [])


# ----------------------------------------------------------------------------
# How far a run got.


@dataclasses.dataclass(frozen=True)
class RunState:
    """What state.json says: epochs finished, the backup of the last, and
    whether the outputs were written after the last epoch."""
    epochs_done: int = 0
    phase: str | None = None
    backup: str | None = None  # Relative to the run folder.
    finished: bool = False


def read_state(model_dir: str) -> RunState:
    """The run's state.json, checked, or a fresh run's state when there is none."""
    path = run_folder.path(model_dir, run_folder.STATE)
    if not tf.io.gfile.exists(path):
        return RunState()
    state = RunState(**_read_fields(path, RunState))
    if state.epochs_done < 0:
        raise UserInputError(f'{path}: epochs_done is {state.epochs_done}, not a count')
    if state.backup is not None and os.path.dirname(state.backup) != run_folder.BACKUP:
        raise UserInputError(f'{path}: backup is {json_fields.shown(state.backup)}, not a '
                             f'file of {run_folder.BACKUP}/')
    return state


def check_resumable(model_dir: str) -> RunState:
    """The state of a run to resume, once every file the rerun reads or
    rewrites is checked: state.json, history.csv, best.json, the backup.

    The trainer writes each whole (`write_text_atomically`), and history.csv
    before the backup and state.json of its epoch, so a kill leaves none of
    them torn or behind one another; a file that is, was changed since, and
    is refused rather than guessed at.

    Raises:
        UserInputError: naming the file and what is wrong with it.
    """
    state = read_state(model_dir)
    _check_history_for_resume(model_dir, state)
    best_record = run_folder.path(model_dir, run_folder.BEST_RECORD)
    if tf.io.gfile.exists(best_record):
        read_best_record(best_record)
    if state.backup is not None and not state.finished:
        backup = run_folder.path(model_dir, state.backup)
        if tf.io.gfile.exists(backup):
            _check_backup(backup)
        elif not tf.io.gfile.exists(run_folder.path(model_dir, run_folder.FINAL_MODEL)):
            raise UserInputError(f'{run_folder.path(model_dir, run_folder.STATE)} names the '
                                 f'backup {state.backup}, which is missing')
    return state


def _check_backup(path: str) -> None:
    """Refuses a backup that is no HDF5 file before anything is rewritten:
    Keras reads it only once the model is built and compiled."""
    try:
        with tf.io.gfile.GFile(path, 'rb') as file, h5py.File(file, 'r'):
            pass
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise UserInputError(f'{path} cannot be read as this run\'s weights '
                             f'({errors.first_line(str(error))})') from None


def _check_history_for_resume(model_dir: str, state: RunState) -> None:
    """history.csv has only the trainer's columns, and a row for every epoch done."""
    path = run_folder.path(model_dir, run_folder.HISTORY)
    state_path = run_folder.path(model_dir, run_folder.STATE)
    if not tf.io.gfile.exists(path):
        if state.epochs_done:
            raise UserInputError(f'{path} is missing, yet {state_path} says '
                                 f'{state.epochs_done} epochs are done')
        return
    header, rows = run_folder.read_history(path)
    unknown = [column for column in header if column not in HISTORY_COLUMNS]
    if unknown or 'epoch' not in header:
        raise UserInputError(f'{path}: the columns are not the trainer\'s '
                             f'({", ".join(HISTORY_COLUMNS)}), its header is {",".join(header)}')
    epochs = {int(row['epoch']) for _, row in rows}
    missing = [epoch for epoch in range(1, state.epochs_done + 1) if epoch not in epochs]
    if missing:
        raise UserInputError(f'{path} has no row for epoch {missing[0]}, which {state_path} '
                             'says is done')


def write_state(model_dir: str, state: RunState) -> None:
    write_text_atomically(run_folder.path(model_dir, run_folder.STATE),
                          json.dumps(dataclasses.asdict(state)) + '\n')
