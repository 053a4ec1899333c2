"""Every default of the project, in one place.

Scripts define their flags from these dataclasses and build one config from
the flags; library code takes the config and never reads flags. `validate`
raises ValueError naming the flag. The standard library alone: scripts import
this before TensorFlow.
"""

import dataclasses

# Defaults several scripts share: the converter writes the records folder the
# others read, and the trainer the run folder evaluate.py and the others read.
RECORDS_DIR = 'records'
MODEL_DIR = 'runs/resnet50'
BATCH_SIZE = 256

# The groups `--help` shows a config's flags in, when its fields name one.
FLAG_GROUPS = {
    'model': 'The network: the ResNet50 backbone and the new head.',
    'training': 'The two phases: epochs, optimizer, learning rates.',
    'devices': 'Precision, XLA and how the work spreads over devices and hosts.',
    'run': 'The run folder: where it is, what goes into it, starting afresh.',
}


def option(default, help: str, group: str | None = None, choices: tuple | None = None,
           minimum=None, below=None):
    """A config field with the help text of its flag, listed by `--help` under
    `group` (a key of FLAG_GROUPS; default: its config's). `validate` refuses
    a value outside `choices`, under `minimum`, or from `below` on (not None)."""
    metadata = dict(help=help, group=group, choices=choices, minimum=minimum, below=below)
    return dataclasses.field(default=default, metadata={
        key: value for key, value in metadata.items() if value is not None})


def _refusal(field: dataclasses.Field, value) -> str | None:
    """Why `validate` refuses a field's value, or None."""
    choices, minimum, below = (field.metadata.get(key) for key in ('choices', 'minimum', 'below'))
    if choices and value not in choices:
        return f'use one of {", ".join(choices)}'
    if value is None or minimum is None:
        return None
    if below is not None and not minimum <= value < below:
        return f'must be in [{minimum}, {below})'
    return f'must be at least {minimum}' if value < minimum else None


class _Validated:
    """`validate` for a config: each field as its `option` says, then `_check`."""

    def validate(self):
        """Checks the values a user can get wrong; returns self."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, _Validated):
                value.validate()
            elif refusal := _refusal(field, value):
                raise ValueError(f'--{field.name}={value}: {refusal}')
        self._check()
        return self

    def _check(self) -> None:
        """What no single field's option can say."""


@dataclasses.dataclass(frozen=True)
class ConvertConfig(_Validated):
    """How `scripts/convert.py` turns a source into TFRecord shards."""
    source: str = option('auto', (
        'Where the images come from: kaggle, dir (--data_dir), tfds, sample (generated '
        'offline), or auto: --data_dir if given, else the Kaggle zip in --download_dir, '
        'else Kaggle when credentials exist, else the sample.'),
        choices=('auto', 'kaggle', 'dir', 'tfds', 'sample'))
    data_dir: str | None = option(None, (
        'A cifar-10.zip, or a folder with cifar-10.zip, or train.7z/test.7z with '
        'trainLabels.csv, or extracted train/<id>.png with trainLabels.csv.'))
    download_dir: str = option('downloads', 'Where --source=kaggle keeps cifar-10.zip.')
    tfds_data_dir: str | None = option(None, 'data_dir of tensorflow-datasets (--source=tfds).')
    output_dir: str = option(RECORDS_DIR, 'The records folder to write (local or gs://).')
    encoding: str = option('raw', (
        'raw: uint8 pixels, nothing to decode while training; png: the original bytes, '
        'under the keys of the TF Model Garden classification decoder.'), choices=('raw', 'png'))
    validation_fraction: float = option(
        0.1, "Share of Kaggle's train set held out, per class, as the validation split.")
    seed: int = option(0, 'Seed of the split, of the shard shuffle and of the sample.')
    # 64 lets file-level sharding feed up to 64 input workers.
    num_shards: int = option(64, 'Shards per split (fewer when a split is smaller).', minimum=1)
    sample_images_per_class: int = option(
        300, 'Training images per class of --source=sample.', minimum=2)
    sample_test_images: int = option(500, 'Unlabelled test images of --source=sample.', minimum=0)
    overwrite: bool = option(False, 'Replace records made from other input or flags.')
    verify: bool = option(False, (
        'Convert nothing: only re-read --output_dir against its manifest and report.'))

    def _check(self) -> None:
        if self.source == 'dir' and not self.data_dir:
            raise ValueError('--source=dir needs --data_dir')
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f'--validation_fraction={self.validation_fraction}: must be between 0 and 1')


UPSAMPLE_METHODS = ('bilinear', 'repeat')


@dataclasses.dataclass(frozen=True)
class InputConfig(_Validated):
    """How the tf.data pipeline reads and prepares the records."""
    records_dir: str = option(RECORDS_DIR, 'The records folder written by scripts/convert.py.')
    batch_size: int = option(
        BATCH_SIZE, 'Global batch size, split evenly over the replicas.', minimum=1)
    image_size: int = option(224, 'Side the 32x32 images are upsampled to (32: none).', minimum=32)
    # Measured by scripts/benchmark.py --suite=input: upsampling to 224 on the
    # host costs several CPU cores per GPU; on the device it is nearly free.
    upsample_on: str = option('device', (
        'device: the model upsamples and normalizes, and uint8 32x32 images cross to the '
        'accelerator (4x less traffic); host: tf.data does both.'), choices=('device', 'host'))
    upsample_method: str = option(
        'bilinear', 'bilinear interpolation, or repeat (pixel repetition; needs a multiple of 32).',
        choices=UPSAMPLE_METHODS)
    normalization: str = option('caffe', (
        'caffe: BGR, 0..255, ImageNet mean subtracted, as the ResNet50 ImageNet weights '
        'expect; unit: RGB scaled to [0, 1].'), choices=('caffe', 'unit'))
    augment: bool = option(True, 'Random crop (4-pixel padding) and horizontal flip in training.')
    label_smoothing: float = option(
        0.1, 'Label smoothing of the one-hot training targets.', minimum=0, below=1)
    cache: str = option('memory', (
        'Cache of decoded images: memory, or a file path prefix or folder, which gets one '
        "file per split and input pipeline, named by the records' fingerprint. With "
        "--data_service the training split is cached in each service worker's memory."))
    shuffle_buffer_size: int | None = option(None, (
        'Images shuffled together: each epoch permutes the split in windows of this many; '
        'default: the whole split (a full shuffle).'), minimum=1)
    seed: int = option(0, (
        'Seed of everything random in training: model initialization, dropout, data order '
        'and augmentation; epoch k draws from (seed, k) alone.'))
    data_service: str | None = option(
        None, 'grpc://host:port of a tf.data service dispatcher to preprocess training on.')
    verify_checksums: bool = option(
        True, 'Check every shard against its manifest sha256 before reading.')

    def _check(self) -> None:
        if self.upsample_method == 'repeat' and self.image_size % 32:
            raise ValueError(
                f'--image_size={self.image_size}: upsampling by repetition needs a multiple of 32')
        if self.data_service and not self.data_service.startswith('grpc://'):
            raise ValueError(f'--data_service={self.data_service}: expected grpc://host:port')


OPTIMIZERS = ('sgd', 'rmsprop', 'adamw')
# The batch size the learning rates below are stated for; they scale linearly.
REFERENCE_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Validated):
    """How `scripts/train.py` trains. Defaults: the GPU recipe (224 px, ImageNet
    weights, head first, then the whole network with SGD + Nesterov, as in
    Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?")."""
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    model_dir: str = option(
        MODEL_DIR, 'Where the run writes everything (local or gs://).', 'run')
    weights: str = option(
        'imagenet', "imagenet (Keras' own), none (random), or a weights file.", 'model')
    head_units: int = option(256, 'Width of the Dense layer of the head.', 'model')
    dropout: float = option(0.3, 'Dropout before the output layer.', 'model', minimum=0, below=1)
    batch_norm_momentum: float = option(0.9, (
        'Momentum of the moving statistics of the BatchNorm layers that train (the head; the '
        "backbone from scratch): Keras' 0.99 lags so far behind a short run that validation "
        'accuracy stays near chance.'), 'model', minimum=0, below=1)
    freeze_epochs: int = option(2, (
        'Epochs training only the head, the backbone frozen (BatchNorm in inference mode); '
        'none with --weights=none.'), 'training')
    fine_tune_epochs: int = option(
        10, 'Epochs training everything afterwards (BatchNorm still in inference mode).',
        'training')
    optimizer: str = option(
        'sgd', 'sgd (Nesterov momentum 0.9), rmsprop or adamw.', 'training', choices=OPTIMIZERS)
    learning_rate: float = option(
        0.1, f'Peak learning rate of the head phase at batch {REFERENCE_BATCH_SIZE}.', 'training')
    fine_tune_learning_rate: float = option(
        0.01, f'Peak learning rate of the fine-tuning phase at batch {REFERENCE_BATCH_SIZE}.',
        'training')
    warmup_epochs: float = option(1.0, 'Linear warm-up at the start of each phase.', 'training')
    weight_decay: float = option(
        0.0, 'Decoupled weight decay, for every optimizer; 0: none (BiT fine-tunes without).',
        'training', minimum=0)
    mixed_precision: str = option('auto', (
        'auto: mixed_float16 on CUDA GPUs, mixed_bfloat16 on TPUs and on CPUs that support '
        'it, float32 otherwise.'), 'devices',
        choices=('auto', 'mixed_float16', 'mixed_bfloat16', 'float32'))
    # A boolean, so a bare --jit_compile cannot take the next argument as its value.
    jit_compile: bool | None = option(
        None, 'XLA: on with GPUs unless --nojit_compile; --jit_compile forces it on.', 'devices')
    strategy: str = option('auto', (
        'auto: multi_worker when TF_CONFIG is set, mirrored with several GPUs, one_device '
        'with one, default otherwise.'), 'devices',
        choices=('auto', 'mirrored', 'multi_worker', 'tpu', 'one_device', 'default'))
    export_saved_model: bool = option(True, (
        'Also write saved_model/ (uint8 images in, probabilities out) for TF Serving; '
        'a finished run given it later exports then.'), 'run')
    evaluation_split: str = option(
        'auto', 'Split for metrics.json: auto (test if labelled, else validation).', 'run')
    steps_per_epoch: int | None = option(
        None, 'Cap on training steps per epoch (for smoke runs).', 'training', minimum=1)
    deterministic: bool = option(False, (
        "TensorFlow's op determinism: the same flags give bitwise the same weights, killed "
        'and resumed or not. Slower on GPUs.'), 'devices')
    overwrite: bool = option(False, (
        'Start afresh in a --model_dir that holds a run, whatever its flags. Without it, a '
        'rerun resumes, and refuses flags that change the result.'), 'run')

    def _check(self) -> None:
        if self.freeze_epochs < 0 or self.fine_tune_epochs < 0 or (
                self.frozen_epochs() + self.fine_tune_epochs < 1):
            raise ValueError(
                f'--freeze_epochs={self.freeze_epochs} --fine_tune_epochs='
                f'{self.fine_tune_epochs}: epochs must not be negative, and one at least'
                + (' (--weights=none has no freeze phase)' if self.weights == 'none' else ''))
        if self.learning_rate <= 0 or self.fine_tune_learning_rate <= 0:
            raise ValueError('learning rates must be positive')

    def frozen_epochs(self) -> int:
        """The epochs of the freeze phase: none from random weights, whose
        frozen features teach a head nothing the fine-tuning can use."""
        return 0 if self.weights == 'none' else self.freeze_epochs

    def scaled_learning_rate(self, phase: str) -> float:
        """A phase's peak learning rate, scaled linearly to the global batch."""
        base = self.learning_rate if phase == 'freeze' else self.fine_tune_learning_rate
        return base * self.input.batch_size / REFERENCE_BATCH_SIZE


@dataclasses.dataclass(frozen=True)
class LaunchConfig(_Validated):
    """How `scripts/launch_local.py` starts a multi-worker job on one machine."""
    num_workers: int = option(
        2, 'Training processes to start, each a worker of one cluster.', minimum=1)
    host: str = option('localhost', 'Address the workers listen on and reach each other at.')
    stop_seconds: float = option(
        10.0, 'After a worker fails, how long the others get to stop before SIGKILL.', minimum=0)


_MODEL_HELP = ('The model: final (the run\'s model), best (best val_accuracy, chosen on '
               'validation), or a path to a .keras file.')


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(_Validated):
    """How `scripts/evaluate.py` evaluates a model of a run on a labelled split."""
    model_dir: str = option(MODEL_DIR, 'The run folder.')
    model: str = option('final', _MODEL_HELP)
    records_dir: str = option(RECORDS_DIR, 'The records folder.')
    split: str = option('auto', 'A labelled split; auto: test if labelled, else validation.')
    batch_size: int = option(BATCH_SIZE, 'Images per prediction batch.', minimum=1)
    output: str | None = option(
        None, 'Where to write the metrics; default <model_dir>/metrics-<model>-<split>.json.')
    predictions_output: str | None = option(None, (
        'Where to write the predictions; default <model_dir>/predictions-<model>-<split>.npz.'))


@dataclasses.dataclass(frozen=True)
class PredictConfig(_Validated):
    """What `scripts/predict.py` classifies: the test records, or your own images."""
    model_dir: str = option(MODEL_DIR, 'The run folder.')
    model: str = option('final', _MODEL_HELP)
    records_dir: str = option(RECORDS_DIR, 'The records folder, with a test split.')
    images: tuple[str, ...] = option((), (
        'Classify these images instead of the test records: PNG or JPEG files, folders or '
        'globs, comma-separated.'))
    output: str | None = option(None, (
        'The CSV to write; default <model_dir>/submission-<model>.csv, or with --images '
        '<model_dir>/image-predictions-<model>.csv.'))
    batch_size: int = option(BATCH_SIZE, 'Images per prediction batch.', minimum=1)


@dataclasses.dataclass(frozen=True)
class PlotConfig(_Validated):
    """Which figures `scripts/plot.py` draws, from which run folders."""
    model_dir: str | None = option(None, 'The run folder to plot (local or gs://).')
    output_dir: str | None = option(None, (
        'Where to write the PNGs; by default the run figures go into --model_dir and the '
        'comparison into the first folder of --compare.'))
    compare: tuple[str, ...] = option(
        (), 'Comma-separated run folders to overlay in compare_loss.png and compare_accuracy.png.')
    model: str = option('final', _MODEL_HELP)
    split: str | None = option(
        None, "The split the model's figures show; default: metrics.json's, the trainer's.")

    def _check(self) -> None:
        if not self.model_dir and not self.compare:
            raise ValueError('nothing to plot: give --model_dir=RUN_FOLDER or '
                             '--compare=RUN_FOLDER,RUN_FOLDER')


# Runs per measurement when --repeats is not given; the fastest is kept.
BENCHMARK_REPEATS = {'convert': 3, 'input': 5, 'train': 3, 'data_service': 3}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(_Validated):
    """What `scripts/benchmark.py` measures, each entry against its baseline."""
    suite: str = option('convert', f'Which measurements: {", ".join(BENCHMARK_REPEATS)}.',
                        choices=tuple(BENCHMARK_REPEATS))
    data_dir: str = option(
        '../shared/data', "Folder (or zip) with Kaggle's cifar-10.zip, for --suite=convert.")
    records_dir: str = option(RECORDS_DIR, 'Converted records, for every suite but convert.')
    batch_size: int = option(
        BATCH_SIZE, 'Global batch size, for every suite but convert.', minimum=1)
    image_size: int = option(32, 'Model input side, for --suite=train.', minimum=32)
    service_workers: int = option(
        2, 'tf.data service workers started in-process, for --suite=data_service.', minimum=1)
    # Fewer steps and turns gave ratios from 0.72x to 1.68x on a shared 2-core machine.
    steps: int = option(30, 'Timed training steps, for --suite=train.', minimum=1)
    repeats: int | None = option(None, (
        'Runs per measurement, in turns; the median is reported (default: ' + ', '.join(
            f'{count} for {suite}' for suite, count in BENCHMARK_REPEATS.items()) + ').'),
        minimum=1)
    output_json: str | None = option(None, 'Where to write the results as JSON.')

    def runs_per_measurement(self) -> int:
        """--repeats, or the suite's default."""
        return self.repeats or BENCHMARK_REPEATS[self.suite]


MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class DataServiceConfig(_Validated):
    """The tf.data service `scripts/data_service.py` starts."""
    role: str = option('all', (
        'all: a dispatcher and --num_workers workers in this process; dispatcher; or '
        'worker (of --dispatcher).'), choices=('all', 'dispatcher', 'worker'))
    port: int = option(5050, 'Dispatcher port (role all or dispatcher).')
    num_workers: int = option(1, 'Workers to start (role all or worker).', minimum=1)
    dispatcher: str | None = option(None, 'host:port of the dispatcher (role worker).')

    def _check(self) -> None:
        if not 1 <= self.port <= MAX_PORT:
            raise ValueError(f'--port={self.port}: must be between 1 and {MAX_PORT}')
        if self.role == 'worker' and not self.dispatcher:
            raise ValueError('--role=worker needs --dispatcher=host:port')
