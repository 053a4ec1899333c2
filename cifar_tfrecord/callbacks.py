"""The callbacks of a phase's fit: what makes a run safe to kill, resume and read.

An epoch's outputs (best.keras, history.csv) are written before the backup that marks
it done (`RunFolder.save_backup`): a kill in between redoes the epoch, rewriting them
rather than losing them. A step whose loss is not finite stops the run at once.
"""

import math
import time
from typing import Callable

import keras
import numpy as np
from absl import logging

from cifar_tfrecord import distributed
from cifar_tfrecord import faults
from cifar_tfrecord import files
from cifar_tfrecord.errors import UserInputError
from cifar_tfrecord.progress import describe_seconds
from cifar_tfrecord.run_folder import LOGS, BestRecord, RunFolder


def inference_model_writer(model: keras.Model) -> Callable[[str], None]:
    """What writes the model for inference: its architecture and weights, no optimizer.

    A new, uncompiled Functional model of the same layers saves no optimizer state
    (twice the weights for AdamW; resuming reads the backup), sharing, not copying,
    the weights. `input`, not `inputs`: a SavedModel exported from a list asks for one.
    """
    return keras.Model(model.input, model.output, name=model.name).save


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops the run at the first step whose loss is not finite, in one line.

    Raised from the step, before `on_epoch_end`, so the epoch is never marked done.
    (Keras' TerminateOnNaN only ends the epoch early: the backup would record it as
    done, and the next phase would go on from NaN weights.)
    """

    def __init__(self, run: RunFolder, phase: str):
        super().__init__()
        self._run = run
        self._phase = phase
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get('loss')
        if loss is not None and not math.isfinite(float(loss)):
            done = self._run.read_state().epochs_done
            raise UserInputError(
                f'training diverged: the loss reached {float(loss)} at step {batch + 1} of '
                f'epoch {self._epoch + 1} ({self._phase}); {self._run.chief_dir} keeps its '
                f'{done} finished epochs, which a rerun resumes from. A lower learning rate '
                f'needs a fresh start: --overwrite, or another --model_dir')


class HistoryCSV(keras.callbacks.Callback):
    """One row per epoch in history.csv, with learning rate and images/s, and the same
    row on the console with the run's time left: counting the run's epochs and naming
    the phase, where the Keras bar counts only this phase's fit."""

    def __init__(self, run: RunFolder, phase: str, images_per_epoch: int,
                 total_epochs: int | None = None):
        super().__init__()
        self._run = run
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
        self._run.append_history(row)
        self._epoch_times.append(epoch_seconds)
        logging.info('%s', self._summary(row))

    def _summary(self, row: dict) -> str:
        """The epoch's row in one line, with the run's time left."""
        total = self._total_epochs or row['epoch']
        measures = ', '.join(f'{name} {row[name]:.4f}' for name in (
            'loss', 'accuracy', 'val_loss', 'val_accuracy') if row[name] is not None)
        left = (total - row['epoch']) * sum(self._epoch_times) / len(self._epoch_times)
        return (f'{self._phase} epoch {row["epoch"]}/{total}: {measures}, '
                f'{row["images_per_second"]:,.0f} images/s, '
                + ('done' if left == 0 else f'about {describe_seconds(left)} left'))


class RunTimeEstimate(keras.callbacks.Callback):
    """Times the first steps of a run and says how long the whole run will take; on a
    machine without an accelerator, warns when that is over an hour and names the
    command that would take less: the trainer's defaults are a GPU recipe (224 px)."""

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
    """best.keras, the model of the best val_accuracy, kept across resumes: the
    accuracy to beat comes from the chief's best.json."""

    def __init__(self, run: RunFolder):
        super().__init__()
        self._run = run
        self._best = -math.inf

    def on_train_begin(self, logs=None):
        self._best = self._run.best_accuracy()

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get('val_accuracy')
        if accuracy is not None and accuracy > self._best:
            self._best = float(accuracy)
            self._run.save_best(BestRecord(self._best, epoch + 1),
                                inference_model_writer(self.model))


class EpochBackup(keras.callbacks.Callback):
    """After every epoch: the weights and optimizer state, then state.json. Random state
    needs none: an epoch's input and dropout follow from seed and epoch (`ReseedDropout`)."""

    def __init__(self, run: RunFolder, phase: str):
        super().__init__()
        self._run = run
        self._phase = phase

    def on_epoch_end(self, epoch, logs=None):
        self._run.save_backup(epoch + 1, self._phase, self.model.save_weights)


class ReseedDropout(keras.callbacks.Callback):
    """Seeds every Dropout layer from (seed, epoch) as each epoch begins.

    `save_weights` does not hold a dropout layer's random state, so a resumed run
    would replay the first epoch's masks; reseeded, epoch k's masks never depend on
    whether the run was interrupted.
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
    return [dropout for dropout in distributed.layers_of_type(layer, keras.layers.Dropout)
            if dropout.rate > 0]


class FaultPoints(keras.callbacks.Callback):
    """Tests only: lets `faults` kill the process after a chosen training step."""

    def on_train_batch_end(self, batch, logs=None):
        faults.reached('train_step')


def make_callbacks(run: RunFolder, phase: str, images_per_epoch: int, seed: int,
                   total_epochs: int | None = None,
                   estimate: RunTimeEstimate | None = None) -> list:
    """The callbacks of one phase's fit, in the order they must run."""
    # A test's kill comes first, before the bar draws the step: its line starts afresh.
    callbacks = [FaultPoints()] if faults.enabled() else []
    callbacks += [
        StopOnNonFiniteLoss(run, phase),  # Before the bar draws the step, too.
        # Keras appends its own bar after these, which would end its line
        # only after HistoryCSV had logged the epoch's summary onto it.
        keras.callbacks.ProgbarLogger(),
        ReseedDropout(seed),
        distributed.AverageMovingStatistics(),
        BestCheckpoint(run),
        HistoryCSV(run, phase, images_per_epoch, total_epochs),
        keras.callbacks.TensorBoard(run.path(LOGS)),
        EpochBackup(run, phase),
    ]
    return callbacks + ([estimate] if estimate else [])


def save_inference_model(model: keras.Model, path: str) -> None:
    """The model for inference (`inference_model_writer`), written whole or not at all."""
    files.save_atomically(path, inference_model_writer(model))
