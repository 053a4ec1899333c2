"""Training: pipeline, model, strategy and callbacks wired together.

`train(config)` runs two phases, each a `model.fit` with its own compile:
the head alone on a frozen backbone, then the whole network. Everything a
run writes lands in `config.model_dir`:

    config.json        resolved configuration, library versions, devices
    history.csv        one row per epoch, even across kills and resumes
    logs/              TensorBoard
    best.keras         best val_accuracy so far (written atomically)
    final.keras        the model after the last epoch
    saved_model/       SavedModel: uint8 32x32x3 images in, probabilities out
                       (unless --noexport_saved_model)
    metrics.json       accuracy, loss, per-class accuracy, confusion matrix
    predictions.npz    a few hundred images with their predictions, for plots
    backup/            BackupAndRestore state; removed when the run finishes

Rerunning the same command after a crash or kill resumes where it stopped.

Under `MultiWorkerMirroredStrategy` every worker runs the same fits (their
collective operations must match), but only the chief writes `model_dir`.
The others write the same files into a temporary folder of their own,
`model_dir/.worker-N`, removed when they finish. Every worker resumes from
the chief's files (state.json, backup/, best.json), so after any worker is
killed a rerun of the whole job starts all of them at the same epoch with
the same weights; `model_dir` must therefore be shared by all the hosts
(gs:// or a network file system).
"""

import dataclasses
import json
import os
import platform
import sys

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cifar_tfrecord import callbacks as run_callbacks
from cifar_tfrecord import evaluate
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord.config import TrainConfig
from cifar_tfrecord.errors import UserInputError

PHASES = ('freeze', 'fine_tune')


def train(config: TrainConfig) -> dict | None:
    """Trains, evaluates and exports.

    Returns:
        The evaluation metrics; None on a worker that is not the chief, which
        neither evaluates nor exports.
    """
    config.validate()
    # Every check that can fail comes before the first file is written.
    records.load_manifest(config.input.records_dir)
    model_lib.check_weights(config.weights)
    precision = resolve_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = make_strategy(config.strategy)
    jit_compile = resolve_jit_compile(config.jit_compile)
    train_data, train_count = pipeline.distribute(strategy, config.input, 'train', True)
    validation_data, _ = pipeline.distribute(strategy, config.input, 'validation', False)
    steps_per_epoch = train_count // config.input.batch_size
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise UserInputError(
            f'--batch_size={config.input.batch_size} is larger than the {train_count} '
            'training images')
    logging.info('Strategy %s: %d replicas, %d images per replica, %s, XLA %s',
                 type(strategy).__name__, strategy.num_replicas_in_sync,
                 config.input.batch_size // strategy.num_replicas_in_sync, precision, jit_compile)
    output_dir = make_output_dir(config.model_dir, strategy)
    write_config(config, output_dir, precision, strategy)
    with strategy.scope():
        model = build(config)
    # Every worker resumes from the chief's files, so all resume alike.
    completed = run_callbacks.completed_phases(config.model_dir)
    if completed:
        restore_completed(model, config.model_dir, completed[-1])
    for phase in PHASES:
        if phase not in completed:
            run_phase(model, config, phase, strategy, train_data, validation_data,
                      steps_per_epoch, jit_compile, output_dir)
    return save_and_finish(model, config, strategy, output_dir)


def build(config: TrainConfig) -> keras.Model:
    return model_lib.build_model(
        config.weights, config.input.image_size,
        preprocess=config.input.upsample_on == 'device',
        normalization=config.input.normalization,
        upsample_method=config.input.upsample_method,
        head_units=config.head_units, dropout=config.dropout,
        batch_norm_momentum=config.batch_norm_momentum)


# ----------------------------------------------------------------------------
# Devices, strategy, precision.


def resolve_precision(name: str) -> str:
    """'auto': float16 on CUDA GPUs, bfloat16 on TPUs and capable CPUs."""
    if name != 'auto':
        return name
    if tf.config.list_physical_devices('GPU'):
        return 'mixed_float16'
    if tf.config.list_physical_devices('TPU') or _cpu_has_bfloat16():
        return 'mixed_bfloat16'
    return 'float32'


def _cpu_has_bfloat16() -> bool:
    # AVX512-BF16 and AMX run bfloat16 matrix products natively; elsewhere
    # bfloat16 is emulated and slower than float32.
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve_jit_compile(value: str) -> bool:
    if value == 'auto':
        return bool(tf.config.list_physical_devices('GPU'))
    return value == 'true'


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs.

    True except on the workers of a multi-worker cluster that are not its
    chief: the 'chief' task when the cluster has one, else worker 0.
    """
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == 'chief':
        return True
    has_chief = 'chief' in resolver.cluster_spec().as_dict()
    return resolver.task_type == 'worker' and resolver.task_id == 0 and not has_chief


def worker_model_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: model_dir on the chief, else a folder of its own."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, f'.{resolver.task_type}-{resolver.task_id}')


def make_output_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Creates this process's output folder (`worker_model_dir`) and returns it."""
    output_dir = worker_model_dir(model_dir, strategy)
    if output_dir != model_dir and tf.io.gfile.exists(output_dir):
        tf.io.gfile.rmtree(output_dir)  # Left by a killed worker; never read.
    tf.io.gfile.makedirs(output_dir)
    return output_dir


def _workers(strategy: tf.distribute.Strategy) -> int:
    """How many processes train together: 1 unless multi-worker."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if resolver is None or not resolver.task_type:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return len(cluster.get('chief', [])) + len(cluster.get('worker', []))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy by name; 'auto' picks from the hardware."""
    if name == 'multi_worker' or (name == 'auto' and os.environ.get('TF_CONFIG')):
        # Before anything lists devices: collective operations must be
        # configured before TensorFlow initializes them.
        return KerasMultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices('GPU')
    if name == 'auto':
        if len(gpus) > 1:
            name = 'mirrored'
        elif gpus:
            name = 'one_device'
        else:
            name = 'default'
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


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy, as Keras 3.15 fit needs it on several workers.

    fit averages each step's scalar metrics over the workers with
    `reduce(MEAN, value, axis=0)`, an axis scalars lack ("Invalid reduction
    dimension 0"). For a scalar that means the mean over the replicas,
    which is what it gets here.
    """

    def reduce(self, reduce_op, value, axis=None):
        local_values = self.experimental_local_results(value)
        if axis is not None and all(local.shape.rank == 0 for local in local_values):
            axis = None
        return super().reduce(reduce_op, value, axis)


def write_config(config: TrainConfig, output_dir: str, precision: str,
                 strategy: tf.distribute.Strategy) -> None:
    """config.json: the resolved flags, library versions and devices."""
    content = {
        'config': dataclasses.asdict(config),
        'resolved': {'mixed_precision': precision, 'strategy': type(strategy).__name__,
                     'replicas': strategy.num_replicas_in_sync},
        'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__,
                     'keras': keras.__version__, 'numpy': np.__version__},
        'devices': [device.name for device in tf.config.list_logical_devices()],
        'command': sys.argv,
    }
    run_callbacks.write_text_atomically(
        os.path.join(output_dir, 'config.json'), json.dumps(content, indent=2) + '\n')


# ----------------------------------------------------------------------------
# Phases.


def run_phase(model: keras.Model, config: TrainConfig, phase: str,
              strategy: tf.distribute.Strategy, train_data, validation_data,
              steps_per_epoch: int, jit_compile: bool, output_dir: str) -> None:
    """One phase as one resumable `fit`, with its own compile.

    Writes into output_dir; resumes from config.model_dir, the chief's.
    """
    first_epoch = 0 if phase == 'freeze' else config.freeze_epochs
    epochs = config.freeze_epochs if phase == 'freeze' else config.fine_tune_epochs
    if epochs:
        model_lib.set_backbone_trainable(model, phase == 'fine_tune',
                                         pretrained=config.weights != 'none')
        with strategy.scope():
            compile_model(model, config, phase, steps_per_epoch, epochs, jit_compile)
            if _workers(strategy) > 1:
                _prepare_for_several_workers(model)
        # BackupAndRestore leaves the epoch it restored on the model, and fit
        # prefers it to initial_epoch: clear what an earlier phase left.
        model._initial_epoch = None
        with strategy.scope():  # Where fit finds the strategy of several workers.
            model.fit(
                train_data, validation_data=validation_data, initial_epoch=first_epoch,
                epochs=first_epoch + epochs, steps_per_epoch=steps_per_epoch, verbose='auto',
                callbacks=run_callbacks.make_callbacks(
                    output_dir, phase, config.input.batch_size * steps_per_epoch,
                    chief_dir=config.model_dir))
        run_callbacks.save_weights_atomically(model, _phase_weights_path(output_dir, phase))
    run_callbacks.mark_completed(output_dir, phase)



def _prepare_for_several_workers(model: keras.Model) -> None:
    """Works around two failures of Keras 3.15 fit on several workers.

    First, fit builds the model from a batch averaged over all replicas with
    `strategy.reduce`, which MultiWorkerMirroredStrategy cannot do across
    workers for an (images, labels) pair ("Attempt to convert a value
    (PerReplica ...)"). Without a strategy recorded on the model fit skips
    that step and takes the strategy of the scope it runs in; the optimizer
    is built already (`compile_model`), and the loss and metrics build when
    fit traces its step. The other failure is worked around in
    `KerasMultiWorkerMirroredStrategy`.
    """
    model._distribute_strategy = None


def restore_completed(model: keras.Model, model_dir: str, last_phase: str) -> None:
    """Loads the weights of the last phase an earlier run completed."""
    path = _phase_weights_path(model_dir, last_phase)
    if not tf.io.gfile.exists(path):
        path = os.path.join(model_dir, 'final.keras')  # The run had finished.
    logging.info('Phases up to %s finished in an earlier run; loading %s.', last_phase, path)
    model.load_weights(path)


def _phase_weights_path(model_dir: str, phase: str) -> str:
    return os.path.join(model_dir, 'backup', f'{phase}_done.weights.h5')


def compile_model(model: keras.Model, config: TrainConfig, phase: str, steps_per_epoch: int,
                  epochs: int, jit_compile: bool) -> None:
    """Compiles for a phase: its optimizer, with warm-up then cosine decay."""
    peak = config.scaled_learning_rate(phase)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None, warmup_steps=warmup_steps)
    model.compile(
        optimizer=make_optimizer(config.optimizer, schedule, config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(),
        # Weighted: distributed validation pads with examples of weight 0,
        # and Keras passes sample weights to weighted_metrics alone.
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name='accuracy')],
        jit_compile=jit_compile)
    # Built now, not while fit traces its first step: variables created during
    # tracing make TensorFlow trace the step twice, a second long wait at the
    # start of each phase.
    model.optimizer.build(model.trainable_variables)


def make_optimizer(name: str, learning_rate, weight_decay: float) -> keras.optimizers.Optimizer:
    decay = weight_decay or None
    if name == 'sgd':
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=decay)
    if name == 'rmsprop':
        return keras.optimizers.RMSprop(learning_rate, weight_decay=decay)
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 1e-4)


# ----------------------------------------------------------------------------
# Outputs.


def save_and_finish(model: keras.Model, config: TrainConfig, strategy: tf.distribute.Strategy,
                    output_dir: str) -> dict | None:
    """final.keras on every worker; then, on the chief alone, `finish`.

    Returns:
        The chief's evaluation metrics; None on the other workers, whose
        output folder is removed.
    """
    # Every worker saves, as TensorFlow asks of multi-worker saving: a save
    # may read variables synchronized over the workers, a collective
    # operation the chief could not complete alone.
    run_callbacks.save_model_atomically(model, os.path.join(output_dir, 'final.keras'))
    metrics = finish(config) if output_dir == config.model_dir else None
    if _workers(strategy) > 1:
        # The others wait for the chief's evaluation: a worker that left
        # earlier would be reported to the chief as crashed.
        _wait_for_every_worker(strategy)
    if metrics is None:
        tf.io.gfile.rmtree(output_dir)
        logging.info('Worker done; the chief wrote the outputs into %s', config.model_dir)
    return metrics


def _wait_for_every_worker(strategy: tf.distribute.Strategy) -> None:
    """A barrier: a sum over every replica, which each worker has to join."""
    strategy.reduce('SUM', strategy.run(lambda: tf.constant(1.0)), axis=None)


def finish(config: TrainConfig) -> dict:
    """The SavedModel, metrics.json and predictions.npz, from final.keras."""
    model_dir = config.model_dir
    final_path = os.path.join(model_dir, 'final.keras')
    # Reloaded outside the strategy: evaluation then runs on one device over
    # every image, with no replica left an empty batch.
    serving = evaluate.load_serving_model(final_path)
    export_dir = os.path.join(model_dir, 'saved_model')
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)  # Never a SavedModel of an earlier run.
    if config.export_saved_model:
        serving.export(export_dir, verbose=False)
    split = evaluate.resolve_split(config.input.records_dir, config.evaluation_split)
    device_input = dataclasses.replace(config.input, upsample_on='device')
    metrics = evaluate.evaluate(serving, device_input, split, os.path.basename(final_path))
    evaluate.write_json(os.path.join(model_dir, 'metrics.json'), metrics)
    evaluate.write_predictions(os.path.join(model_dir, 'predictions.npz'), serving,
                               config.input.records_dir, split, os.path.basename(final_path))
    backup_dir = os.path.join(model_dir, 'backup')
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    logging.info('%s accuracy %.4f; everything is in %s', split, metrics['accuracy'], model_dir)
    return metrics
