"""Callbacks and atomic file writes that make a run safe to kill and resume.

Every file a reader may open (history.csv, best.keras, state.json) is written
under a temporary name and renamed into place, so a kill never leaves half a
file behind.
"""

import csv
import io
import json
import math
import os
import time

import keras
import tensorflow as tf

HISTORY_COLUMNS = ('epoch', 'phase', 'loss', 'accuracy', 'val_loss', 'val_accuracy',
                   'learning_rate', 'images_per_second', 'epoch_seconds')
_PARTIAL = '.partial'


def write_text_atomically(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path + _PARTIAL, 'w') as file:
        file.write(text)
    tf.io.gfile.rename(path + _PARTIAL, path, overwrite=True)


def save_model_atomically(model: keras.Model, path: str) -> None:
    # Keras insists on the .keras ending, so the temporary name keeps it.
    temporary = path[:-len('.keras')] + _PARTIAL + '.keras'
    model.save(temporary)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def save_weights_atomically(model: keras.Model, path: str) -> None:
    temporary = path[:-len('.weights.h5')] + _PARTIAL + '.weights.h5'
    model.save_weights(temporary)
    tf.io.gfile.rename(temporary, path, overwrite=True)


# ----------------------------------------------------------------------------
# history.csv


def read_history(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, 'history.csv')
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, 'r') as file:
        return list(csv.DictReader(io.StringIO(file.read())))


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in history.csv, with learning rate and images/s.

    A row replaces any row of the same or a later epoch: after a kill, the
    resumed run rewrites the epochs it redoes, so no epoch is doubled or lost.
    """

    def __init__(self, model_dir: str, phase: str, images_per_epoch: int):
        super().__init__()
        self._path = os.path.join(model_dir, 'history.csv')
        self._model_dir = model_dir
        self._phase = phase
        self._images_per_epoch = images_per_epoch
        self._epoch_start = self._train_seconds = None

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


class BestCheckpoint(keras.callbacks.Callback):
    """best.keras, the model of the best val_accuracy, kept across resumes.

    best.json beside it records that accuracy, written after the model, so a
    resumed run knows what it has to beat. Every worker of a cluster reads
    it from the chief's folder: a worker's own folder starts empty.
    """

    def __init__(self, model_dir: str, chief_dir: str | None = None):
        super().__init__()
        self._model_path = os.path.join(model_dir, 'best.keras')
        self._record_path = os.path.join(model_dir, 'best.json')
        chief_dir = chief_dir or model_dir
        self._chief_paths = (os.path.join(chief_dir, 'best.keras'),
                             os.path.join(chief_dir, 'best.json'))
        self._best = -math.inf

    def on_train_begin(self, logs=None):
        self._best = -math.inf
        model_path, record_path = self._chief_paths
        if tf.io.gfile.exists(model_path) and tf.io.gfile.exists(record_path):
            with tf.io.gfile.GFile(record_path, 'r') as file:
                self._best = json.loads(file.read())['val_accuracy']

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get('val_accuracy')
        if accuracy is not None and accuracy > self._best:
            self._best = float(accuracy)
            save_model_atomically(self.model, self._model_path)
            write_text_atomically(self._record_path, json.dumps(
                {'val_accuracy': self._best, 'epoch': epoch + 1}) + '\n')


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, each backup written whole or not at all.

    Keras writes the weights file in place, and a kill during that write
    leaves a file the resumed run cannot open. Here the weights, then the
    epoch count, are each written under a temporary name and renamed.

    Every worker of a cluster restores from the chief's backup (restore_dir),
    and writes its own: a worker's backup may be older than the chief's, or
    gone, and workers that resumed from different epochs would each wait
    for the other's collective operations.
    """

    def __init__(self, backup_dir: str, restore_dir: str | None = None):
        super().__init__(backup_dir)
        self._restore_dir = restore_dir or backup_dir

    def on_train_begin(self, logs=None):
        weights_path = os.path.join(self._restore_dir, os.path.basename(self._weights_path))
        metadata_path = os.path.join(self._restore_dir,
                                     os.path.basename(self._training_metadata_path))
        if tf.io.gfile.exists(weights_path):
            if self.model.optimizer is not None and not self.model.optimizer.built:
                # The backup holds the optimizer's variables: they must exist.
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(weights_path)
        if tf.io.gfile.exists(metadata_path):
            with tf.io.gfile.GFile(metadata_path, 'r') as file:
                # fit starts from this epoch rather than from initial_epoch.
                self.model._initial_epoch = json.loads(file.read())['epoch']

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        save_weights_atomically(self.model, self._weights_path)
        write_text_atomically(self._training_metadata_path, json.dumps(
            {'epoch': self._current_epoch, 'batch': self._last_batch_seen}))


def make_callbacks(model_dir: str, phase: str, images_per_epoch: int,
                   chief_dir: str | None = None) -> list:
    """The callbacks of one phase's fit, in the order they must run.

    They write into model_dir and resume from chief_dir (by default the
    same): a worker that is not the chief of a cluster writes a folder of
    its own, and resumes from the chief's files, as every worker does.

    At the end of an epoch the outputs are written before the backup that
    marks the epoch done: a kill in between redoes the epoch, and its row
    and checkpoint are written again rather than lost.
    """
    chief_dir = chief_dir or model_dir
    return [
        keras.callbacks.TerminateOnNaN(),
        BestCheckpoint(model_dir, chief_dir),
        HistoryCSV(model_dir, phase, images_per_epoch),
        keras.callbacks.TensorBoard(os.path.join(model_dir, 'logs')),
        AtomicBackupAndRestore(os.path.join(model_dir, 'backup', phase),
                               os.path.join(chief_dir, 'backup', phase)),
    ]


# ----------------------------------------------------------------------------
# Which phases a run has finished.


def completed_phases(model_dir: str) -> list[str]:
    path = os.path.join(model_dir, 'state.json')
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, 'r') as file:
        return json.loads(file.read())['completed_phases']


def mark_completed(model_dir: str, phase: str) -> None:
    phases = completed_phases(model_dir) + [phase]
    write_text_atomically(os.path.join(model_dir, 'state.json'),
                          json.dumps({'completed_phases': phases}) + '\n')
