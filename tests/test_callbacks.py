"""Callbacks that make a run exact across replicas and resumes, and run state."""

import keras
import numpy as np
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
