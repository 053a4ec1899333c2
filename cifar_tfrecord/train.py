"""Training: pipeline, model, strategy and callbacks wired together.

`train(config)` runs two phases, each a `model.fit` with its own compile:
the head alone on a frozen backbone, then the whole network. Everything a
run writes lands in `config.model_dir`, laid out as `run_folder` says.

Rerunning the same command after a crash or kill resumes after the last
finished epoch: the weights and optimizer state come from that epoch's
backup, and the input and dropout of every epoch are functions of the seed
and the epoch, so with `--deterministic` the resumed run ends with exactly
the weights of an uninterrupted one. A rerun with flags that change the
result is refused (`--overwrite` starts afresh); a rerun of a finished run
does nothing.

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
import hashlib
import json
import os
import platform
import random

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cifar_tfrecord import callbacks as run_callbacks
from cifar_tfrecord import cli
from cifar_tfrecord import config as config_lib
from cifar_tfrecord import errors
from cifar_tfrecord import evaluate
from cifar_tfrecord import json_fields
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import TrainConfig
from cifar_tfrecord.errors import Interrupted, UserInputError

PHASES = ('freeze', 'fine_tune')
# Suggested when a run would take hours on a machine without an accelerator.
CPU_RECIPE = 'scripts/recipes/cpu_scratch.flags'


def train(config: TrainConfig) -> dict | None:
    """Trains, evaluates and exports; or resumes where an earlier run stopped.

    Returns:
        The evaluation metrics; None on a worker that is not the chief, which
        neither evaluates nor exports.
    """
    config.validate()
    # Every check that can fail comes before the first file is written.
    manifest = records.load_manifest(config.input.records_dir)
    model_lib.check_weights(config.weights)
    state = resume_state(config, manifest)
    if state.finished:
        logging.info('%s finished already; nothing to do (--overwrite trains again).',
                     config.model_dir)
        return read_metrics(run_folder.path(config.model_dir, run_folder.METRICS))
    precision = resolve_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    strategy = make_strategy(config.strategy)
    # After the strategy: reading a record starts TensorFlow's runtime, which
    # a multi-worker strategy must configure first. Nothing is written yet.
    check_shards(config.input.records_dir, manifest)
    steps_per_epoch = count_steps(config, manifest, strategy)
    logging.info('Strategy %s: %d replicas, %d images per replica, %s, XLA %s',
                 type(strategy).__name__, strategy.num_replicas_in_sync,
                 config.input.batch_size // strategy.num_replicas_in_sync, precision,
                 resolve_jit_compile(config.jit_compile))
    if config.frozen_epochs() != config.freeze_epochs:
        logging.info('--weights=none: no freeze phase (--freeze_epochs=%d skipped), %d epochs '
                     'of training the whole network from scratch', config.freeze_epochs,
                     config.fine_tune_epochs)
    seed_everything(config)
    with strategy.scope():
        model = build(config)
    output_dir = make_output_dir(config, strategy)
    try:
        write_config(config, output_dir, precision, strategy, manifest)
        _run_phases(model, config, strategy, state, steps_per_epoch, output_dir)
        return save_and_finish(model, config, strategy, output_dir)
    except KeyboardInterrupt:
        run_callbacks.remove_partial_files(output_dir)
        done = run_callbacks.read_state(config.model_dir).epochs_done
        kept = (f'{config.model_dir} keeps its {done} finished epochs' if done
                else 'no epoch had finished')
        raise Interrupted(f'{kept}; rerun the same command to resume') from None


def _run_phases(model, config, strategy, state, steps_per_epoch, output_dir) -> None:
    """Every epoch not done yet, phase by phase, from the state's backup."""
    restore = state.backup is not None
    service_job = _service_job_prefix(strategy) if config.input.data_service else None
    estimate = run_time_estimate(config, strategy, steps_per_epoch, state.epochs_done)
    for phase in PHASES:
        first, end = phase_epochs(config, phase)
        if end > max(first, state.epochs_done):
            run_phase(model, config, phase, strategy, max(first, state.epochs_done),
                      steps_per_epoch, output_dir, state if restore else None, service_job,
                      estimate)
            restore, estimate = False, None
    if restore:  # Every epoch was done: the run was killed before its outputs.
        load_backup(model, config.model_dir, state)


def run_time_estimate(config: TrainConfig, strategy: tf.distribute.Strategy,
                      steps_per_epoch: int, epochs_done: int
                      ) -> run_callbacks.RunTimeEstimate | None:
    """The chief's estimate of the run's time; with the CPU recipe's command
    as advice when there is no accelerator."""
    if not is_chief(strategy):
        return None
    advice = None
    if not (tf.config.list_physical_devices('GPU') or tf.config.list_physical_devices('TPU')):
        advice = ('Without a GPU, the CPU recipe trains ResNet50 from scratch at 32 px in '
                  f'minutes: python scripts/train.py --flagfile={CPU_RECIPE} '
                  f'--records_dir={config.input.records_dir} --model_dir=<a new folder>')
    epochs_left = phase_epochs(config, 'fine_tune')[1] - epochs_done
    return run_callbacks.RunTimeEstimate(steps_per_epoch, epochs_left, advice)


def phase_epochs(config: TrainConfig, phase: str) -> tuple[int, int]:
    """The phase's epochs, [first, end), counted over the whole run."""
    frozen = config.frozen_epochs()
    return (0, frozen) if phase == 'freeze' else (frozen, frozen + config.fine_tune_epochs)


def count_steps(config: TrainConfig, manifest: records.Manifest,
                strategy: tf.distribute.Strategy) -> int:
    """Training steps per epoch; refuses a batch the data or replicas cannot fill."""
    pipeline.check_batch_divides(config.input.batch_size, strategy.num_replicas_in_sync)
    train_count = manifest.splits['train'].num_examples
    steps_per_epoch = train_count // config.input.batch_size
    if config.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if steps_per_epoch < 1:
        raise UserInputError(
            f'--batch_size={config.input.batch_size} is larger than the {train_count} '
            'training images')
    return steps_per_epoch


def check_shards(records_dir: str, manifest: records.Manifest) -> None:
    """Every shard of the manifest present with its size, train and validation
    among them: a stat each, so a missing shard stops the run before it
    writes, not when its split is first read."""
    for split in dict.fromkeys(['train', 'validation', *manifest.splits]):
        records.present_shard_paths(records_dir, split, manifest)


def seed_everything(config: TrainConfig) -> None:
    """Seeds initialization (Python, NumPy, TensorFlow); op determinism if asked.

    Dropout is reseeded each epoch (`callbacks.ReseedDropout`) and the input
    draws from (seed, epoch) (`pipeline.epoch_key`).
    """
    keras.utils.set_random_seed(config.input.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


# ----------------------------------------------------------------------------
# Resuming.


def resume_state(config: TrainConfig, manifest: records.Manifest) -> run_callbacks.RunState:
    """How far an earlier run in config.model_dir got; refuses a changed run.

    A run folder whose config.json differs in a flag that changes the
    result, or whose records hold other data, is refused before anything is
    written; `--overwrite` starts afresh instead. So is a run folder with a
    file the rerun would misread (`callbacks.check_resumable`), or with a
    run but no config.json: files are written whole, so such a file was
    edited or damaged since, and nothing guesses what it held.
    """
    if config.overwrite:
        return run_callbacks.RunState()
    saved = _saved_config(config.model_dir)
    if saved is None:
        return run_callbacks.RunState()
    changes = [f'--{name}={new} (the run has {old})'
               for name, old, new in config_lib.changed_flags(saved['config'], config)]
    saved_records = saved.get('records', {}).get('fingerprint')
    if saved_records and saved_records != manifest.fingerprint():
        changes.append(f'--records_dir={config.input.records_dir} holds other records '
                       f'(fingerprint {manifest.fingerprint()[:12]}, the run has '
                       f'{saved_records[:12]})')
    if changes:
        raise UserInputError(
            f'{config.model_dir} holds a run with other flags: {"; ".join(changes)}. Rerun '
            'with its flags to resume, or pass --overwrite to start afresh, or choose '
            'another --model_dir')
    return _refused_unless_whole(run_callbacks.check_resumable, config.model_dir)


_START_AFRESH = 'pass --overwrite to start afresh, or choose another --model_dir'
# Files that make a folder a run's, for a run whose config.json is missing.
_RUN_EVIDENCE = (run_folder.STATE, run_folder.HISTORY, run_folder.BEST_MODEL,
                 run_folder.FINAL_MODEL)


def _saved_config(model_dir: str) -> dict | None:
    path = run_folder.path(model_dir, run_folder.CONFIG)
    if tf.io.gfile.exists(path):
        return _refused_unless_whole(config_lib.read_run_config, path)
    evidence = [name for name in _RUN_EVIDENCE
                if tf.io.gfile.exists(run_folder.path(model_dir, name))]
    if evidence:
        raise UserInputError(f'{path} is missing, yet {model_dir} holds a run '
                             f'({", ".join(evidence)}): {_START_AFRESH}')
    return None


def _refused_unless_whole(read, *arguments):
    """`read(*arguments)`, its UserInputError saying how to go on."""
    try:
        return read(*arguments)
    except UserInputError as error:
        raise UserInputError(f'{error}; {_START_AFRESH}') from None


# What the trainer's metrics.json must hold for the line that ends a rerun.
_METRICS_FIELDS = {'split': str, 'accuracy': float, 'loss': float}


def read_metrics(path: str) -> dict:
    """The trainer's metrics.json, with the fields a finished run reports."""
    metrics = _refused_unless_whole(run_folder.read_json, path)
    try:
        json_fields.check_object(metrics, 'the file')
        for key, kind in _METRICS_FIELDS.items():
            if key not in metrics:
                raise json_fields.FieldError(f'lacks the key {key}')
            json_fields.check_type(metrics[key], kind, key)
    except json_fields.FieldError as error:
        raise UserInputError(f'{path}: {error}; {_START_AFRESH}') from None
    return metrics


def load_backup(model: keras.Model, model_dir: str, state: run_callbacks.RunState) -> None:
    """The weights (and optimizer state, when compiled alike) the state names.

    A finished run's backup is gone; its final.keras holds the same weights.
    """
    path = run_folder.path(model_dir, state.backup)
    if not tf.io.gfile.exists(path):
        path = run_folder.path(model_dir, run_folder.FINAL_MODEL)
    logging.info('Resuming after epoch %d: loading %s', state.epochs_done, path)
    try:
        model.load_weights(path)
    except (OSError, ValueError) as error:  # h5py and Keras: a damaged or foreign file.
        raise UserInputError(f'{path} cannot be read as this run\'s weights '
                             f'({errors.first_line(str(error))}); {_START_AFRESH}') from None


def _service_job_prefix(strategy: tf.distribute.Strategy) -> str:
    """A tf.data service job name the workers of this attempt share, and no other.

    A job outlives its consumers for a while: a rerun that reused the name
    would join the killed run's job, half consumed. The chief draws a random
    number and every worker takes it from the chief's first replica.
    """
    number = random.SystemRandom().randrange(1 << 30) if is_chief(strategy) else 0
    if _workers(strategy) > 1:
        def chief_number():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return tf.where(replica == 0, tf.constant(number, tf.int64), 0)
        number = int(strategy.reduce('SUM', strategy.run(chief_number), axis=None))
    return f'train-{number}'


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


def resolve_jit_compile(value: bool | None) -> bool:
    """--jit_compile: XLA as given, or when unset (auto) on with GPUs."""
    if value is None:
        return bool(tf.config.list_physical_devices('GPU'))
    return value


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
    return run_folder.worker_folder(model_dir, resolver.task_type, resolver.task_id)


def make_output_dir(config: TrainConfig, strategy: tf.distribute.Strategy) -> str:
    """Creates this process's output folder (`worker_model_dir`) and returns it.

    With --overwrite the chief first removes the files of the run before.
    """
    output_dir = worker_model_dir(config.model_dir, strategy)
    if output_dir != config.model_dir and tf.io.gfile.exists(output_dir):
        tf.io.gfile.rmtree(output_dir)  # Left by a killed worker; never read.
    elif config.overwrite and tf.io.gfile.exists(output_dir):
        for name in filter(run_folder.is_run_file, tf.io.gfile.listdir(output_dir)):
            path = run_folder.path(output_dir, name.rstrip('/'))
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
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
                 strategy: tf.distribute.Strategy, manifest: records.Manifest) -> None:
    """config.json: the resolved flags, the records, library versions and devices."""
    content = {
        'config': dataclasses.asdict(config),
        'records': {'fingerprint': manifest.fingerprint(), 'class_names': manifest.class_names,
                    'records_dir': config.input.records_dir},
        'resolved': {'mixed_precision': precision, 'strategy': type(strategy).__name__,
                     'replicas': strategy.num_replicas_in_sync,
                     'jit_compile': resolve_jit_compile(config.jit_compile)},
        'versions': {'python': platform.python_version(), 'tensorflow': tf.__version__,
                     'keras': keras.__version__, 'numpy': np.__version__},
        'devices': [device.name for device in tf.config.list_logical_devices()],
        'command': cli.command_line(),
        'recipe': cli.recipe(cli.command_line()),
    }
    run_callbacks.write_text_atomically(
        run_folder.path(output_dir, run_folder.CONFIG), json.dumps(content, indent=2) + '\n')


# ----------------------------------------------------------------------------
# Phases.


def run_phase(model: keras.Model, config: TrainConfig, phase: str,
              strategy: tf.distribute.Strategy, first_epoch: int, steps_per_epoch: int,
              output_dir: str, restore: run_callbacks.RunState | None,
              service_job: str | None,
              estimate: run_callbacks.RunTimeEstimate | None = None) -> None:
    """One phase, from `first_epoch` to its end, as one `fit` with its own compile.

    Writes into output_dir. `restore`: the state of an earlier run to resume
    from, whose backup is loaded; its optimizer state too when it was saved
    in this phase (the other phase's optimizer trains other variables).
    `estimate`: times the first steps, for the first phase this process runs.
    """
    phase_first, end = phase_epochs(config, phase)
    model_lib.set_backbone_trainable(model, phase == 'fine_tune',
                                     pretrained=config.weights != 'none')
    resume_in_phase = restore is not None and restore.epochs_done > phase_first
    if restore is not None and not resume_in_phase:
        load_backup(model, config.model_dir, restore)
    with strategy.scope():
        compile_model(model, config, phase, steps_per_epoch, end - phase_first,
                      resolve_jit_compile(config.jit_compile))
        if _workers(strategy) > 1:
            _prepare_for_several_workers(model)
    if resume_in_phase:
        load_backup(model, config.model_dir, restore)
    # Endless: fit takes steps_per_epoch batches an epoch from one iterator.
    # (A finite dataset makes Keras warn that it ran out of data; through a
    # service, consumers take batches at uneven rates and a finite job could
    # end for one worker while another still waits on it.)
    # A service job of this attempt's own for each phase it starts.
    job = f'{service_job}-{phase}-{first_epoch}' if service_job else None
    train_data, _ = pipeline.distribute(strategy, config.input, 'train', True,
                                        first_epoch=first_epoch,
                                        steps_per_epoch=steps_per_epoch, service_job=job)
    validation_data, validation_count = pipeline.distribute(
        strategy, config.input, 'validation', False)
    with strategy.scope():  # Where fit finds the strategy of several workers.
        model.fit(
            # shuffle=False: the batches are shuffled already, as Keras
            # would otherwise warn; validation_steps: its dataset's length.
            train_data, validation_data=validation_data, initial_epoch=first_epoch,
            epochs=end, steps_per_epoch=steps_per_epoch, shuffle=False, verbose='auto',
            validation_steps=pipeline.evaluation_steps(
                validation_count, config.input.batch_size, _workers(strategy)),
            callbacks=run_callbacks.make_callbacks(
                output_dir, phase, config.input.batch_size * steps_per_epoch,
                config.input.seed, chief_dir=config.model_dir,
                total_epochs=phase_epochs(config, 'fine_tune')[1], estimate=estimate))


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
    """The optimizer by name, with decoupled weight decay; 0 means none."""
    if name == 'sgd':
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=weight_decay or None)
    if name == 'rmsprop':
        return keras.optimizers.RMSprop(learning_rate, weight_decay=weight_decay or None)
    # AdamW insists on a number; 0 makes its decay step a no-op.
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)


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
    run_callbacks.save_model_atomically(model, run_folder.path(output_dir, run_folder.FINAL_MODEL))
    logging.info('Final weights: sha256 %s', weights_digest(model))
    metrics = finish(config) if output_dir == config.model_dir else None
    if _workers(strategy) > 1:
        # The others wait for the chief's evaluation: a worker that left
        # earlier would be reported to the chief as crashed.
        _wait_for_every_worker(strategy)
    if metrics is None:
        tf.io.gfile.rmtree(output_dir)
        logging.info('Worker done; the chief wrote the outputs into %s', config.model_dir)
    return metrics


def weights_digest(model: keras.Model) -> str:
    """The sha256 of every weight's bytes: equal digests, bitwise equal weights.

    Compares runs, and the workers of one run, without their model files.
    """
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def _wait_for_every_worker(strategy: tf.distribute.Strategy) -> None:
    """A barrier: a sum over every replica, which each worker has to join."""
    strategy.reduce('SUM', strategy.run(lambda: tf.constant(1.0)), axis=None)


def finish(config: TrainConfig) -> dict:
    """The SavedModel, metrics.json and predictions.npz, from final.keras.

    Marks the run finished last, then removes its backup: a kill before
    that mark reruns this, from final.keras.
    """
    model_dir = config.model_dir
    final_path = run_folder.path(model_dir, run_folder.FINAL_MODEL)
    # Reloaded outside the strategy: evaluation then runs on one device over
    # every image, with no replica left an empty batch.
    serving = evaluate.load_serving_model(final_path)
    export_dir = run_folder.path(model_dir, run_folder.SAVED_MODEL)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)  # Never a SavedModel of an earlier run.
    if config.export_saved_model:
        evaluate.export_saved_model(serving, export_dir)
    split = evaluate.resolve_split(config.input.records_dir, config.evaluation_split)
    device_input = dataclasses.replace(config.input, upsample_on='device')
    metrics = evaluate.evaluate(serving, device_input, split, run_folder.FINAL_MODEL)
    evaluate.write_json(run_folder.path(model_dir, run_folder.METRICS), metrics)
    evaluate.write_predictions(run_folder.path(model_dir, run_folder.PREDICTIONS), serving,
                               config.input.records_dir, split, run_folder.FINAL_MODEL)
    state = run_callbacks.read_state(model_dir)
    run_callbacks.write_state(model_dir, dataclasses.replace(state, finished=True))
    backup_dir = run_folder.path(model_dir, run_folder.BACKUP)
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    logging.info('%s accuracy %.4f; everything is in %s', split, metrics['accuracy'], model_dir)
    return metrics
