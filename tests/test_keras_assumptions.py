"""The canary: what the trainer assumes of Keras, checked on the installed one.

The trainer relies on a few Keras behaviours (the distributed workarounds'
canaries are in test_distributed.py). A new
Keras could change them silently (a resumed run would then see other data,
or several workers would fail); these tests name what broke, and the Keras
versions the code was tested with (constraints.txt pins them).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf


TESTED = 'the code was tested with Keras 3.15 (constraints.txt)'


def _canary(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f'Keras {keras.__version__}: {what}; {TESTED}', pytrace=False)


def _small_model() -> keras.Model:
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])


def test_fit_takes_steps_per_epoch_batches_an_epoch_from_one_iterator():
    # The trainer hands fit one endless dataset whose epoch k holds epoch k's
    # batches; fit must take exactly steps_per_epoch of them an epoch, in
    # order, and start at initial_epoch.
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append((self.epoch, batch))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    drawn = []

    def draw(index):
        drawn.append(int(index))
        return index

    dataset = tf.data.Dataset.counter().map(
        lambda index: tf.py_function(draw, [index], tf.int64)).map(
        lambda index: (tf.fill([1, 2], tf.cast(index, tf.float32)), tf.zeros([1, 1])))
    model = _small_model()
    model.compile(optimizer='sgd', loss='mse')
    model.fit(dataset, initial_epoch=2, epochs=5, steps_per_epoch=3, shuffle=False, verbose=0,
              callbacks=[Record()])
    _canary(seen == [(epoch, batch) for epoch in (2, 3, 4) for batch in range(3)],
            f'fit(initial_epoch=2, epochs=5, steps_per_epoch=3) ran the steps {seen}')
    # One iterator across the epochs: batches 0 to 8 drawn, none twice.
    _canary(set(range(9)) <= set(drawn) and len(set(drawn)) == len(drawn),
            f'fit drew the batches {drawn}: not one iterator across epochs')


def test_dropout_keeps_its_random_state_in_a_seed_generator():
    layer = keras.layers.Dropout(0.5)
    _canary(isinstance(getattr(layer, 'seed_generator', None), keras.random.SeedGenerator),
            'Dropout.seed_generator is not a SeedGenerator (callbacks.ReseedDropout reseeds it)')
    state = layer.seed_generator.state
    _canary(tuple(state.shape) == (2,), f'SeedGenerator.state has shape {state.shape}, not (2,)')


def test_weights_files_hold_the_optimizer_state_and_load_without_it(tmp_path):
    # The backup of an epoch restores the optimizer (step count, momentum);
    # at a phase boundary it is loaded into a model not compiled yet.
    model = _small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss='mse')
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=1, batch_size=2, verbose=0)
    path = str(tmp_path / 'backup.weights.h5')
    model.save_weights(path)
    restored = _small_model()
    restored.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss='mse')
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(path)
    _canary(int(restored.optimizer.iterations) == 2,
            'save_weights/load_weights no longer carry the optimizer state')
    uncompiled = _small_model()
    uncompiled.load_weights(path)
    _canary(all(np.array_equal(a, b) for a, b in zip(uncompiled.get_weights(),
                                                      model.get_weights())),
            'load_weights into an uncompiled model no longer loads the weights')
