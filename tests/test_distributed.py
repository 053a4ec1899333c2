"""The distributed workarounds (cifar_tfrecord/distributed.py) and their canaries.

Each canary checks the Keras behaviour a workaround exists for, on the
installed Keras. When one fails, Keras changed: the workaround it names may
be wrong now, or no longer needed (each says when it can go).
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_trainer

from cifar_tfrecord import distributed

TESTED = 'the code was tested with Keras 3.15 (constraints.txt)'


def _canary(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f'Keras {keras.__version__}: {what}; {TESTED}', pytrace=False)


def _batch_norm_fit(strategy) -> keras.Model:
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.5),
                                  keras.layers.Dense(1)])
        model.compile(optimizer='sgd', loss='mse')
    # Each replica gets its own half of the batch: different batch means.
    model.fit(np.array([[0, 0, 0], [10, 20, 30]], np.float32), np.zeros((2, 1)), batch_size=2,
              epochs=1, verbose=0, shuffle=False)
    return model


def _moving_means(strategy, model) -> list[np.ndarray]:
    layer = distributed.layers_of_type(model, keras.layers.BatchNormalization)[0]
    return [copy.numpy() for copy in strategy.experimental_local_results(layer.moving_mean.value)]


def test_keras_reduces_scalars_along_axis_0():
    # KerasMultiWorkerMirroredStrategy.reduce exists for this call, which
    # fails on a scalar ("Invalid reduction dimension 0").
    source = inspect.getsource(keras_trainer.reduce_per_replica)
    _canary('strategy.reduce("MEAN", v, axis=0)' in source,
            'fit no longer reduces over several workers along axis 0: '
            'distributed.KerasMultiWorkerMirroredStrategy may go')
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    scalars = strategy.run(lambda: tf.constant(2.0))
    with pytest.raises(ValueError, match='reduction dimension'):
        strategy.reduce('MEAN', scalars, axis=0)


def test_the_private_attribute_the_workaround_sets():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    _canary(hasattr(model, '_distribute_strategy'),
            'Model._distribute_strategy is gone (distributed.prepare_for_several_workers '
            'sets it to None so that fit does not reduce a batch over the workers)')


def test_replicas_keep_their_own_moving_statistics():
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    copies = _moving_means(strategy, _batch_norm_fit(strategy))
    _canary(not np.array_equal(copies[0], copies[1]),
            'BatchNormalization now synchronizes its moving statistics over the replicas: '
            'distributed.AverageMovingStatistics may go')


def test_replicas_end_an_epoch_with_the_same_moving_statistics():
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    model = _batch_norm_fit(strategy)
    before = _moving_means(strategy, model)
    average = distributed.AverageMovingStatistics()
    average.set_model(model)
    with strategy.scope():
        average.on_test_begin()
    after = _moving_means(strategy, model)
    np.testing.assert_array_equal(after[0], after[1])
    np.testing.assert_allclose(after[0], np.mean(before, axis=0), rtol=1e-6)


def test_layers_are_found_inside_nested_models():
    inner = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.5)])
    outer = keras.Sequential([keras.Input((2,)), keras.layers.Dropout(0.1), inner])
    assert len(distributed.layers_of_type(outer, keras.layers.Dropout)) == 2
