"""Callbacks that make a run exact across replicas and resumes, and run state."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import callbacks
from cifar_tfrecord import run_folder


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


def test_replicas_end_an_epoch_with_the_same_moving_statistics():
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.5),
                                  keras.layers.Dense(1)])
        model.compile(optimizer='sgd', loss='mse')
    # Each replica gets its own half of the batch: different batch means.
    features = np.array([[0, 0, 0], [10, 20, 30]], np.float32)
    model.fit(features, np.zeros((2, 1)), batch_size=2, epochs=1, verbose=0, shuffle=False)
    norm = model.layers[0]
    before = [copy.numpy() for copy in
              strategy.experimental_local_results(norm.moving_mean.value)]
    assert not np.array_equal(before[0], before[1])
    average = callbacks.AverageMovingStatistics()
    average.set_model(model)
    with strategy.scope():
        average.on_test_begin()
    after = [copy.numpy() for copy in strategy.experimental_local_results(norm.moving_mean.value)]
    np.testing.assert_array_equal(after[0], after[1])
    np.testing.assert_allclose(after[0], np.mean(before, axis=0), rtol=1e-6)


def test_state_round_trips_and_a_new_run_has_none(tmp_path):
    assert callbacks.read_state(str(tmp_path)) == callbacks.RunState()
    state = callbacks.RunState(epochs_done=3, phase='fine_tune',
                               backup='backup/epoch-0003.weights.h5')
    callbacks.write_state(str(tmp_path), state)
    assert callbacks.read_state(str(tmp_path)) == state
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
    history = callbacks.HistoryCSV(str(tmp_path), 'fine_tune', images_per_epoch=16,
                                   total_epochs=5)
    with caplog.at_level('INFO', logger='absl'):
        _fit_small(tmp_path, [history])
    lines = [record.getMessage() for record in caplog.records
             if record.getMessage().startswith('fine_tune epoch')]
    assert len(lines) == 2
    assert re.fullmatch(r'fine_tune epoch 1/5: loss \d+\.\d{4}, accuracy \d\.\d{4}, '
                        r'val_loss \d+\.\d{4}, val_accuracy \d\.\d{4}, [\d,]+ images/s, '
                        r'about \d+ s left', lines[0]), lines[0]
    assert lines[1].startswith('fine_tune epoch 2/5:')
    assert len(callbacks.read_history(str(tmp_path))) == 2


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
        'run', 'fine_tune', images_per_epoch=16, seed=0, total_epochs=2)]
    assert names.index('ProgbarLogger') < names.index('HistoryCSV')
