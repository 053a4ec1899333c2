"""Training: pipeline, model, strategy and callbacks wired together.

`train(config)` runs two phases, each a `model.fit` with its own compile:
the head alone on a frozen backbone, then the whole network. Everything a
run writes lands in `config.model_dir`, laid out as `run_folder` says.

Rerunning the same command after a crash or kill resumes after the last
finished epoch: the weights and optimizer state come from that epoch's
backup, and the input and dropout of every epoch are functions of the seed
and the epoch, so with `--deterministic` the resumed run ends with exactly
the weights of an uninterrupted one. A rerun that would compute something
else is refused (`RunFolder.resume`; `--overwrite` starts afresh); a rerun
of a finished run only adds the SavedModel if it is asked for and missing.

On several workers every worker runs the same fits, and only the chief
writes `model_dir` (`distributed`); every worker resumes from the chief's
files, so `model_dir` must be shared by all the hosts (gs:// or a network
file system).
"""

import dataclasses
import hashlib
import platform

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from cifar_tfrecord import callbacks as run_callbacks
from cifar_tfrecord import distributed
from cifar_tfrecord import evaluate
from cifar_tfrecord import files
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import optimizers
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import TrainConfig
from cifar_tfrecord.errors import Interrupted, UserInputError, first_line
from cifar_tfrecord.run_folder import RunFolder, RunState

PHASES = ('freeze', 'fine_tune')
# Suggested when a run would take hours on a machine without an accelerator.
CPU_RECIPE = 'scripts/recipes/cpu_scratch.flags'


def train(config: TrainConfig, command_line: tuple[str, ...] = ()) -> run_folder.Metrics | None:
    """Trains, evaluates and exports; or resumes where an earlier run stopped.

    Args:
        config: the run.
        command_line: what config.json records as the command (its flag
            files are read and recorded too).

    Returns:
        The evaluation metrics; None on a worker that is not the chief, which
        neither evaluates nor exports.
    """
    config.validate()
    # Every check that can fail comes before the first file is written.
    manifest = records.load_manifest(config.input.records_dir)
    model_lib.check_weights(config.weights)
    precision = resolve_precision(config.mixed_precision)
    jit_compile = resolve_jit_compile(config.jit_compile)
    chief = RunFolder(config.model_dir)
    state = chief.resume(config, precision, jit_compile, manifest.fingerprint())
    if state.finished:
        return _finished(config, chief)
    keras.mixed_precision.set_global_policy(precision)
    strategy = distributed.make_strategy(config.strategy)
    # After the strategy: reading a record starts TensorFlow's runtime, which
    # a multi-worker strategy must configure first. Nothing is written yet.
    records.check_shards(config.input.records_dir, manifest, records.FIRST_RECORD,
                         splits=('train', 'validation', *manifest.splits))
    steps_per_epoch = count_steps(config, manifest, strategy)
    logging.info('Strategy %s: %d replicas, %d images per replica, %s, XLA %s',
                 type(strategy).__name__, strategy.num_replicas_in_sync,
                 config.input.batch_size // strategy.num_replicas_in_sync, precision, jit_compile)
    if config.frozen_epochs() != config.freeze_epochs:
        logging.info('--weights=none: no freeze phase (--freeze_epochs=%d skipped), %d epochs '
                     'of training the whole network from scratch', config.freeze_epochs,
                     config.fine_tune_epochs)
    seed_everything(config)
    with strategy.scope():
        model = build(config)
    output = RunFolder(distributed.worker_model_dir(config.model_dir, strategy), config.model_dir)
    output.prepare(start_afresh=config.overwrite)
    try:
        output.write_config(run_config(config, manifest, precision, jit_compile, strategy,
                                       command_line))
        _run_phases(model, config, strategy, state, steps_per_epoch, output, jit_compile)
        return save_and_finish(model, config, strategy, output)
    except KeyboardInterrupt:
        output.remove_partial_files()
        done = chief.read_state().epochs_done
        kept = (f'{config.model_dir} keeps its {done} finished epochs' if done
                else 'no epoch had finished')
        raise Interrupted(f'{kept}; rerun the same command to resume') from None


def _finished(config: TrainConfig, run: RunFolder) -> run_folder.Metrics:
    """A finished run's metrics; the SavedModel added if asked for and missing."""
    if config.export_saved_model and not run.exists(run_folder.SAVED_MODEL):
        logging.info('%s finished already; exporting its %s', config.model_dir,
                     run_folder.SAVED_MODEL)
        evaluate.export_saved_model(
            evaluate.load_serving_model(run.path(run_folder.FINAL_MODEL)),
            run.path(run_folder.SAVED_MODEL))
    else:
        logging.info('%s finished already; nothing to do (--overwrite trains again).',
                     config.model_dir)
    return run_folder.read_metrics(run.path(run_folder.METRICS))


def _run_phases(model, config, strategy, state, steps_per_epoch, output, jit_compile) -> None:
    """Every epoch not done yet, phase by phase, from the state's backup."""
    restore = state if state.backup is not None else None
    service_job = (f'train-{distributed.chief_random_number(strategy)}'
                   if config.input.data_service else None)
    estimate = run_time_estimate(config, strategy, steps_per_epoch, state.epochs_done)
    for phase in PHASES:
        first, end = phase_epochs(config, phase)
        if end > max(first, state.epochs_done):
            run_phase(model, config, phase, strategy, max(first, state.epochs_done),
                      steps_per_epoch, output, restore, service_job, estimate, jit_compile)
            restore, estimate = None, None
    if restore:  # Every epoch was done: the run was killed before its outputs.
        load_backup(model, output, restore)


def run_time_estimate(config: TrainConfig, strategy: tf.distribute.Strategy,
                      steps_per_epoch: int, epochs_done: int
                      ) -> run_callbacks.RunTimeEstimate | None:
    """The chief's estimate of the run's time; with the CPU recipe's command
    as advice when there is no accelerator."""
    if not distributed.is_chief(strategy):
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


def seed_everything(config: TrainConfig) -> None:
    """Seeds initialization (Python, NumPy, TensorFlow); op determinism if asked.

    Dropout is reseeded each epoch (`callbacks.ReseedDropout`) and the input
    draws from (seed, epoch) (`pipeline.epoch_key`).
    """
    keras.utils.set_random_seed(config.input.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def load_backup(model: keras.Model, run: RunFolder, state: RunState) -> None:
    """The weights (and optimizer state, when compiled alike) the state names."""
    path = run.backup_to_load(state)
    logging.info('Resuming after epoch %d: loading %s', state.epochs_done, path)
    try:
        model.load_weights(path)
    except (OSError, ValueError) as error:  # h5py and Keras: a damaged or foreign file.
        raise UserInputError(f"{path} cannot be read as this run's weights "
                             f'({first_line(str(error))}); {run_folder.START_AFRESH}') from None


def build(config: TrainConfig) -> keras.Model:
    return model_lib.build_model(
        config.weights, config.input.image_size,
        preprocess=config.input.upsample_on == 'device',
        normalization=config.input.normalization,
        upsample_method=config.input.upsample_method,
        head_units=config.head_units, dropout=config.dropout,
        batch_norm_momentum=config.batch_norm_momentum)


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


def run_config(config: TrainConfig, manifest: records.Manifest, precision: str,
               jit_compile: bool, strategy: tf.distribute.Strategy,
               command_line: tuple[str, ...]) -> run_folder.RunConfig:
    """What config.json records: the flags and what they resolved to, the
    records, library versions, devices and the command."""
    return run_folder.RunConfig(
        config=config,
        records=run_folder.TrainedOn(manifest.fingerprint(), manifest.class_names,
                                     config.input.records_dir),
        mixed_precision=precision, jit_compile=jit_compile,
        strategy=type(strategy).__name__, replicas=strategy.num_replicas_in_sync,
        versions={'python': platform.python_version(), 'tensorflow': tf.__version__,
                  'keras': keras.__version__, 'numpy': np.__version__},
        devices=tuple(device.name for device in tf.config.list_logical_devices()),
        command=tuple(command_line), recipe=run_folder.Recipe.of(list(command_line)))


# ----------------------------------------------------------------------------
# Phases.


def run_phase(model: keras.Model, config: TrainConfig, phase: str,
              strategy: tf.distribute.Strategy, first_epoch: int, steps_per_epoch: int,
              output: RunFolder, restore: RunState | None, service_job: str | None,
              estimate: run_callbacks.RunTimeEstimate | None, jit_compile: bool) -> None:
    """One phase, from `first_epoch` to its end, as one `fit` with its own compile.

    `restore`: the state of an earlier run to resume from, whose backup is
    loaded; its optimizer state too when it was saved in this phase (the
    other phase's optimizer trains other variables). `estimate`: times the
    first steps, for the first phase this process runs.
    """
    phase_first, end = phase_epochs(config, phase)
    model_lib.set_backbone_trainable(model, phase == 'fine_tune',
                                     pretrained=config.weights != 'none')
    resume_in_phase = restore is not None and restore.epochs_done > phase_first
    if restore is not None and not resume_in_phase:
        load_backup(model, output, restore)
    with strategy.scope():
        compile_model(model, config, phase, steps_per_epoch, end - phase_first, jit_compile)
        if distributed.workers(strategy) > 1:
            distributed.prepare_for_several_workers(model)
    if resume_in_phase:
        load_backup(model, output, restore)
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
                validation_count, config.input.batch_size, distributed.workers(strategy)),
            callbacks=run_callbacks.make_callbacks(
                output, phase, config.input.batch_size * steps_per_epoch, config.input.seed,
                total_epochs=phase_epochs(config, 'fine_tune')[1], estimate=estimate))


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
        optimizer=optimizers.make_optimizer(config.optimizer, schedule, config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(),
        # Weighted: distributed validation pads with examples of weight 0,
        # and Keras passes sample weights to weighted_metrics alone.
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name='accuracy')],
        jit_compile=jit_compile)
    # Built now, not while fit traces its first step: variables created during
    # tracing make TensorFlow trace the step twice, a second long wait at the
    # start of each phase.
    model.optimizer.build(model.trainable_variables)


# ----------------------------------------------------------------------------
# Outputs.


def save_and_finish(model: keras.Model, config: TrainConfig, strategy: tf.distribute.Strategy,
                    output: RunFolder) -> run_folder.Metrics | None:
    """final.keras on every worker; then, on the chief alone, `finish`.

    Returns:
        The chief's evaluation metrics; None on the other workers, whose
        output folder is removed.
    """
    # Every worker saves, as TensorFlow asks of multi-worker saving: a save
    # may read variables synchronized over the workers, a collective
    # operation the chief could not complete alone.
    run_callbacks.save_inference_model(model, output.path(run_folder.FINAL_MODEL))
    logging.info('Final weights: sha256 %s', weights_digest(model))
    metrics = finish(config, output) if output.model_dir == config.model_dir else None
    if distributed.workers(strategy) > 1:
        # The others wait for the chief's evaluation: a worker that left
        # earlier would be reported to the chief as crashed.
        distributed.wait_for_every_worker(strategy)
    if metrics is None:
        files.remove(output.model_dir)
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


def finish(config: TrainConfig, run: RunFolder) -> run_folder.Metrics:
    """The SavedModel, metrics.json and predictions.npz, from final.keras;
    then the run marked finished (a kill before that reruns this)."""
    # Reloaded outside the strategy: evaluation then runs on one device over
    # every image, with no replica left an empty batch.
    serving = evaluate.load_serving_model(run.path(run_folder.FINAL_MODEL))
    if run.exists(run_folder.SAVED_MODEL):
        files.remove(run.path(run_folder.SAVED_MODEL))  # Never a SavedModel of an earlier run.
    if config.export_saved_model:
        evaluate.export_saved_model(serving, run.path(run_folder.SAVED_MODEL))
    split = evaluate.resolve_split(config.input.records_dir, config.evaluation_split)
    device_input = dataclasses.replace(config.input, upsample_on='device')
    metrics = evaluate.evaluate(serving, device_input, split, run_folder.FINAL_MODEL)
    files.write_dataclass(run.path(run_folder.METRICS), metrics)
    evaluate.write_predictions(run.path(run_folder.PREDICTIONS), serving,
                               config.input.records_dir, split, run_folder.FINAL_MODEL)
    run.mark_finished()
    logging.info('%s accuracy %.4f; everything is in %s', split, metrics.accuracy,
                 config.model_dir)
    return metrics
