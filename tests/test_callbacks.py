"""Callbacks that make a run exact across replicas and resumes, and run state."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import callbacks
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError


def _dropout_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    # A layer at rate 0 has no random state to reseed (--dropout=0).
    return keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.5),
                             keras.layers.Dropout(0.0),
                             keras.Sequential([keras.layers.Dropout(0.5)])])


def _masks(model: keras.Model, epoch: int, calls: int = 2) -> list[np.ndarray]:
    reseed = callbacks.ReseedDropout(seed=7)
    reseed.set_model(model)
    reseed.on_epoch_begin(epoch)
    return [model(np.ones((1, 64), np.float32), training=True).numpy() for _ in range(calls)]


def test_dropout_of_an_epoch_depends_on_the_seed_and_the_epoch_alone():
    # Another model (another construction seed), which ran epoch 0 before.
    first, second = _dropout_model(1), _dropout_model(2)
    _masks(second, epoch=0)
    resumed = _masks(second, epoch=3)
    uninterrupted = _masks(first, epoch=3)
    assert len(callbacks.dropout_layers(first)) == 2  # The nested one too.
    for got, expected in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(resumed[0], resumed[1])  # Calls within an epoch differ.
    assert not np.array_equal(_masks(first, epoch=4)[0], uninterrupted[0])


def test_state_round_trips_and_a_new_run_has_none(tmp_path):
    run = run_folder.RunFolder(str(tmp_path))
    assert run.read_state() == run_folder.RunState()
    state = run_folder.RunState(epochs_done=3, phase='fine_tune',
                                backup='backup/epoch-0003.weights.h5')
    run.write_state(state)
    assert run.read_state() == state
    assert sorted(path.name for path in tmp_path.iterdir()) == [run_folder.STATE]


def _fit_small(tmp_path, callback_list, epochs=2, steps=8):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(10, activation='softmax')])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss='categorical_crossentropy',
                  weighted_metrics=[keras.metrics.CategoricalAccuracy(name='accuracy')])
    features = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    targets = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    model.fit(features, targets, batch_size=2, epochs=epochs, steps_per_epoch=steps,
              validation_data=(features, targets), verbose=0, callbacks=callback_list)


def test_each_epoch_ends_with_one_line_of_where_the_run_is(tmp_path, caplog):
    run = run_folder.RunFolder(str(tmp_path))
    history = callbacks.HistoryCSV(run, 'fine_tune', images_per_epoch=16, total_epochs=5)
    with caplog.at_level('INFO', logger='absl'):
        _fit_small(tmp_path, [history])
    lines = [record.getMessage() for record in caplog.records
             if record.getMessage().startswith('fine_tune epoch')]
    assert len(lines) == 2
    assert re.fullmatch(r'fine_tune epoch 1/5: loss \d+\.\d{4}, accuracy \d\.\d{4}, '
                        r'val_loss \d+\.\d{4}, val_accuracy \d\.\d{4}, [\d,]+ images/s, '
                        r'about \d+ s left', lines[0]), lines[0]
    assert lines[1].startswith('fine_tune epoch 2/5:')
    assert [row['epoch'] for row in run.history_rows()] == ['1', '2']


@pytest.mark.parametrize('advice', [None, 'use the CPU recipe'])
def test_a_long_run_is_foretold_once_with_advice(tmp_path, caplog, monkeypatch, advice):
    monkeypatch.setattr(callbacks, '_LONG_RUN_SECONDS', 0)  # Every run is long.
    estimate = callbacks.RunTimeEstimate(steps_per_epoch=8, epochs_left=12, advice=advice)
    with caplog.at_level('INFO', logger='absl'):
        _fit_small(tmp_path, [estimate], epochs=2)
    messages = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith('Timed 5 steps: about ') and 'for the 12 epochs' in message
               for message in messages) == 1
    warnings = [message for message in messages if 'over an hour' in message]
    assert warnings == ([] if advice is None else
                        ['That is over an hour on this machine. use the CPU recipe'])


def test_the_progress_bar_ends_its_line_before_the_epochs_summary():
    """Keras would append its own bar last, whose line would end only after
    HistoryCSV had logged the summary onto it."""
    names = [type(callback).__name__ for callback in callbacks.make_callbacks(
        run_folder.RunFolder('run'), 'fine_tune', images_per_epoch=16, seed=0, total_epochs=2)]
    assert names.index('ProgbarLogger') < names.index('HistoryCSV')
    # Stopping comes before anything that would record the step or the epoch.
    assert names.index('StopOnNonFiniteLoss') < names.index('ProgbarLogger')


def test_a_diverged_loss_stops_the_run_before_its_epoch_is_recorded(tmp_path):
    run = run_folder.RunFolder(str(tmp_path))
    run.write_state(run_folder.RunState(epochs_done=1, phase='fine_tune',
                                        backup='backup/epoch-0001.weights.h5'))
    ended = []
    recorder = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ended.append(epoch))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    # A rate this large sends a linear model's squared error to infinity within steps.
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss='mse')
    features = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    with pytest.raises(UserInputError) as raised:
        model.fit(features, np.ones((16, 1)), batch_size=2, epochs=2, verbose=0,
                  validation_data=(features, np.ones((16, 1))),
                  callbacks=[callbacks.StopOnNonFiniteLoss(run, 'fine_tune'), recorder])
    message = str(raised.value)
    assert '\n' not in message
    for words in ('diverged', 'epoch 1', 'fine_tune', '1 finished epochs'):
        assert words in message
    assert re.search(r'loss reached (nan|inf)', message), message
    assert ended == []
    assert run.read_state().epochs_done == 1
