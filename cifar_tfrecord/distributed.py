"""tf.distribute: the strategy, which process writes, and what Keras needs on several replicas.

Under `MultiWorkerMirroredStrategy` every worker runs the same fits (their
collective operations must match), but only the chief writes the run
folder; the others write a folder of their own (`worker_model_dir`).

The workarounds below are for Keras 3.15 with TensorFlow 2.21. Each says its
upstream issue and when it can go; tests/test_distributed.py holds the
canary tests that fail when the behaviour worked around changes.
"""

import os
import random

import keras
import numpy as np
import tensorflow as tf

from cifar_tfrecord import run_folder


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy by name; 'auto' picks from the hardware."""
    if name == 'multi_worker' or (name == 'auto' and os.environ.get('TF_CONFIG')):
        # Before anything lists devices: collective operations must be
        # configured before TensorFlow initializes them.
        return KerasMultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices('GPU')
    if name == 'auto':
        name = 'mirrored' if len(gpus) > 1 else 'one_device' if gpus else 'default'
    if name == 'mirrored':
        # Without GPUs, mirror over the logical CPUs (tests split the CPU).
        devices = None if gpus else [device.name for device in tf.config.list_logical_devices('CPU')]
        return tf.distribute.MirroredStrategy(devices)
    if name == 'tpu':
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == 'one_device':
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs.

    True except on the workers of a multi-worker cluster that are not its
    chief: the 'chief' task when the cluster has one, else worker 0.
    """
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type or resolver.task_type == 'chief':
        return True
    has_chief = 'chief' in resolver.cluster_spec().as_dict()
    return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


def workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together: 1 unless multi-worker."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return len(cluster.get('chief', [])) + len(cluster.get('worker', []))


def worker_model_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: model_dir on the chief, else a folder of its own."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return run_folder.worker_folder(model_dir, resolver.task_type, resolver.task_id)


def wait_for_every_worker(strategy: tf.distribute.Strategy) -> None:
    """A barrier: a sum over every replica, which each worker has to join."""
    strategy.reduce('SUM', strategy.run(lambda: tf.constant(1.0)), axis=None)


def chief_random_number(strategy: tf.distribute.Strategy) -> int:
    """A random number the chief draws, and every worker receives from its
    first replica (the others add nothing to the sum)."""
    number = random.SystemRandom().randrange(1 << 30) if is_chief(strategy) else 0
    if workers(strategy) == 1:
        return number

    def from_first_replica():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.where(replica == 0, tf.constant(number, tf.int64), 0)

    return int(strategy.reduce('SUM', strategy.run(from_first_replica), axis=None))


def layers_of_type(layer: keras.layers.Layer, layer_type: type) -> list:
    """The layers of a type in a model, nested models included, in a fixed order."""
    if isinstance(layer, layer_type):
        return [layer]
    return [found for inner in getattr(layer, 'layers', [])
            for found in layers_of_type(inner, layer_type)]


# ----------------------------------------------------------------------------
# Workarounds.


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy, as Keras 3.15 fit needs it on several workers.

    fit averages each step's scalar metrics over the workers with
    `reduce(MEAN, value, axis=0)`, an axis scalars lack ("Invalid reduction
    dimension 0"). For a scalar that means the mean over the replicas,
    which is what it gets here.

    Upstream: tensorflow/tensorflow#72388, keras-team/keras#20585. Remove
    when fit on several workers reduces scalars without an axis: the canary
    `test_keras_reduces_scalars_along_axis_0` then fails.
    """

    def reduce(self, reduce_op, value, axis=None):
        local_values = self.experimental_local_results(value)
        if axis is not None and all(local.shape.rank == 0 for local in local_values):
            axis = None
        return super().reduce(reduce_op, value, axis)


def prepare_for_several_workers(model: keras.Model) -> None:
    """Lets Keras 3.15 fit run on several workers; call after compiling.

    fit builds the model from a batch averaged over all replicas with
    `strategy.reduce`, which MultiWorkerMirroredStrategy cannot do across
    workers for an (images, labels) pair ("Attempt to convert a value
    (PerReplica ...)"). Without a strategy recorded on the model fit skips
    that step and takes the strategy of the scope it runs in; the optimizer
    is built already, and the loss and metrics build when fit traces its step.

    Upstream: keras-team/keras#20585. Remove when a two-worker fit passes
    without it (tests/test_launch.py); the canary
    `test_the_private_attribute_the_workaround_sets` fails first if Keras
    drops the attribute.
    """
    model._distribute_strategy = None


class AverageMovingStatistics(keras.callbacks.Callback):
    """Averages the BatchNorm moving statistics over the replicas before validation.

    Keras 3 creates a moving mean or variance with aggregation "none", so
    each replica updates its own copy from its own images: the replicas drift
    apart, a saved model holds one replica's statistics, and the workers of a
    job end with different weights. The moving average is linear in the batch
    statistics: averaged once an epoch, the replicas hold what averaging every
    step would have given, for one all-reduce an epoch instead of one per
    layer and step. Validation, checkpoints and the backup then see the same
    statistics on every replica.

    Upstream: Keras' BatchNormalization (keras/src/layers/normalization/
    batch_normalization.py) adds its moving statistics without an
    aggregation; no issue is filed. Remove when Keras synchronizes them: the
    canary `test_replicas_keep_their_own_moving_statistics` then fails.
    """

    def on_test_begin(self, logs=None):
        strategy = tf.distribute.get_strategy()
        variables = [variable for layer in layers_of_type(self.model, keras.layers.BatchNormalization)
                     if layer.trainable for variable in (layer.moving_mean, layer.moving_variance)]
        if strategy.num_replicas_in_sync == 1 or not variables:
            return
        local = strategy.run(lambda: tf.concat(
            [tf.reshape(variable.value, [-1]) for variable in variables], axis=0))
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)
        parts = tf.split(mean, [int(np.prod(variable.shape)) for variable in variables])
        for variable, part in zip(variables, parts):
            variable.assign(tf.reshape(part, variable.shape))
