"""Every default of the project, in one place.

Scripts define their flags from these dataclasses and build one config from
the flags; library code takes the config and never reads flags.
"""

import dataclasses

from cifar_tfrecord import json_fields
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError

# Defaults several scripts share, written once: the converter writes the
# records folder the trainer, evaluate.py, predict.py and the benchmarks read,
# and the trainer writes the run folder the others read.
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


def option(default, help: str, group: str | None = None):
    """A config field with the help text its command-line flag shows.

    `group` (a key of FLAG_GROUPS) is the heading `--help` lists the flag
    under; by default, its config's.
    """
    metadata = {'help': help} if group is None else {'help': help, 'group': group}
    return dataclasses.field(default=default, metadata=metadata)


def _check_at_least(flag: str, value, minimum) -> None:
    if value < minimum:
        raise UserInputError(f'--{flag}={value}: must be at least {minimum}')


SOURCES = ('auto', 'kaggle', 'dir', 'tfds', 'sample')


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """How `scripts/convert.py` turns a source into TFRecord shards."""
    source: str = option('auto', (
        'Where the images come from: kaggle, dir (--data_dir), tfds, sample (generated '
        'offline), or auto: --data_dir if given, else the Kaggle zip in --download_dir, '
        'else Kaggle when credentials exist, else the sample.'))
    data_dir: str | None = option(None, (
        'A cifar-10.zip, or a folder with cifar-10.zip, or train.7z/test.7z with '
        'trainLabels.csv, or extracted train/<id>.png with trainLabels.csv.'))
    download_dir: str = option('downloads', 'Where --source=kaggle keeps cifar-10.zip.')
    tfds_data_dir: str | None = option(None, 'data_dir of tensorflow-datasets (--source=tfds).')
    output_dir: str = option(RECORDS_DIR, 'The records folder to write (local or gs://).')
    encoding: str = option('raw', (
        'raw: uint8 pixels, nothing to decode while training; png: the original bytes, '
        'under the keys of the TF Model Garden classification decoder.'))
    validation_fraction: float = option(
        0.1, "Share of Kaggle's train set held out, per class, as the validation split.")
    seed: int = option(0, 'Seed of the split, of the shard shuffle and of the sample.')
    # 64 lets file-level sharding feed up to 64 input workers.
    num_shards: int = option(64, 'Shards per split (fewer when a split is smaller).')
    sample_images_per_class: int = option(300, 'Training images per class of --source=sample.')
    sample_test_images: int = option(500, 'Unlabelled test images of --source=sample.')
    overwrite: bool = option(False, 'Replace records made from other input or flags.')
    verify: bool = option(False, (
        'Convert nothing: only re-read --output_dir against its manifest and report.'))

    def validate(self) -> 'ConvertConfig':
        """Checks the values a user can get wrong; returns self."""
        if self.source not in SOURCES:
            raise UserInputError(f'--source={self.source}: use one of {", ".join(SOURCES)}')
        if self.source == 'dir' and not self.data_dir:
            raise UserInputError('--source=dir needs --data_dir')
        if self.encoding not in ('raw', 'png'):
            raise UserInputError(f'--encoding={self.encoding}: use raw or png')
        if not 0 < self.validation_fraction < 1:
            raise UserInputError(
                f'--validation_fraction={self.validation_fraction}: must be between 0 and 1')
        _check_at_least('num_shards', self.num_shards, 1)
        if self.sample_images_per_class < 2 or self.sample_test_images < 0:
            raise UserInputError(
                '--sample_images_per_class must be at least 2 and --sample_test_images '
                'not negative')
        return self


UPSAMPLE_PLACES = ('device', 'host')
UPSAMPLE_METHODS = ('bilinear', 'repeat')
NORMALIZATIONS = ('caffe', 'unit')


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How the tf.data pipeline reads and prepares the records."""
    records_dir: str = option(RECORDS_DIR, 'The records folder written by scripts/convert.py.')
    batch_size: int = option(BATCH_SIZE, 'Global batch size, split evenly over the replicas.')
    image_size: int = option(224, 'Side the 32x32 images are upsampled to (32: none).')
    # Measured by scripts/benchmark.py --suite=input: upsampling to 224 on the
    # host costs several CPU cores per GPU; on the device it is nearly free.
    upsample_on: str = option('device', (
        'device: the model upsamples and normalizes, and uint8 32x32 images cross to the '
        'accelerator (4x less traffic); host: tf.data does both.'))
    upsample_method: str = option(
        'bilinear', 'bilinear interpolation, or repeat (pixel repetition; needs a multiple of 32).')
    normalization: str = option('caffe', (
        'caffe: BGR, 0..255, ImageNet mean subtracted, as the ResNet50 ImageNet weights '
        'expect; unit: RGB scaled to [0, 1].'))
    augment: bool = option(True, 'Random crop (4-pixel padding) and horizontal flip in training.')
    label_smoothing: float = option(0.1, 'Label smoothing of the one-hot training targets.')
    cache: str = option('memory', (
        'Cache of decoded images: memory, or a file path prefix or folder, which gets one '
        "file per split and input pipeline, named by the records' fingerprint."))
    shuffle_buffer_size: int | None = option(None, (
        'Images shuffled together: each epoch permutes the split in windows of this many; '
        'default: the whole split (a full shuffle).'))
    seed: int = option(0, (
        'Seed of everything random in training: model initialization, dropout, data order '
        'and augmentation; epoch k draws from (seed, k) alone.'))
    data_service: str | None = option(
        None, 'grpc://host:port of a tf.data service dispatcher to preprocess training on.')
    verify_checksums: bool = option(
        True, 'Check every shard against its manifest sha256 before reading.')

    def validate(self) -> 'InputConfig':
        """Checks the values a user can get wrong; returns self."""
        _check_at_least('batch_size', self.batch_size, 1)
        if self.upsample_on not in UPSAMPLE_PLACES:
            raise UserInputError(f'--upsample_on={self.upsample_on}: use device or host')
        if self.upsample_method not in UPSAMPLE_METHODS:
            raise UserInputError(f'--upsample_method={self.upsample_method}: use bilinear or repeat')
        if self.normalization not in NORMALIZATIONS:
            raise UserInputError(f'--normalization={self.normalization}: use caffe or unit')
        if self.image_size < 32:
            raise UserInputError(f'--image_size={self.image_size}: must be at least 32')
        if self.upsample_method == 'repeat' and self.image_size % 32:
            raise UserInputError(
                f'--image_size={self.image_size}: upsampling by repetition needs a multiple of 32')
        if not 0 <= self.label_smoothing < 1:
            raise UserInputError(f'--label_smoothing={self.label_smoothing}: must be in [0, 1)')
        if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 1:
            raise UserInputError(f'--shuffle_buffer_size={self.shuffle_buffer_size}: must be positive')
        if self.data_service and not self.data_service.startswith('grpc://'):
            raise UserInputError(f'--data_service={self.data_service}: expected grpc://host:port')
        return self


OPTIMIZERS = ('sgd', 'rmsprop', 'adamw')
PRECISIONS = ('auto', 'mixed_float16', 'mixed_bfloat16', 'float32')
STRATEGIES = ('auto', 'mirrored', 'multi_worker', 'tpu', 'one_device', 'default')
# The batch size the learning rates below are stated for; they scale linearly.
REFERENCE_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How `scripts/train.py` trains. Defaults: the GPU recipe (224 px, ImageNet
    weights, head first, then the whole network with SGD + Nesterov, as in
    Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?")."""
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    model_dir: str = option(
        MODEL_DIR, 'Where the run writes everything (local or gs://).', 'run')
    weights: str = option(
        'imagenet', "imagenet (Keras' own), none (random), or a weights file.", 'model')
    head_units: int = option(256, 'Width of the Dense layer of the head.', 'model')
    dropout: float = option(0.3, 'Dropout before the output layer.', 'model')
    batch_norm_momentum: float = option(0.9, (
        'Momentum of the moving statistics of the BatchNorm layers that train: the head, and '
        "the backbone from scratch. Keras' 0.99 lags so far behind a short run that "
        'validation accuracy stays near chance while training accuracy climbs.'), 'model')
    freeze_epochs: int = option(2, (
        'Epochs training only the head, the backbone frozen (BatchNorm in inference mode). '
        'None with --weights=none: a head on random frozen features learns nothing.'),
        'training')
    fine_tune_epochs: int = option(
        10, 'Epochs training everything afterwards (BatchNorm still in inference mode).',
        'training')
    optimizer: str = option('sgd', 'sgd (Nesterov momentum 0.9), rmsprop or adamw.', 'training')
    learning_rate: float = option(
        0.1, f'Peak learning rate of the head phase at batch {REFERENCE_BATCH_SIZE}.', 'training')
    fine_tune_learning_rate: float = option(
        0.01, f'Peak learning rate of the fine-tuning phase at batch {REFERENCE_BATCH_SIZE}.',
        'training')
    warmup_epochs: float = option(1.0, 'Linear warm-up at the start of each phase.', 'training')
    weight_decay: float = option(
        0.0, 'Decoupled weight decay, for every optimizer; 0: none (BiT fine-tunes without).',
        'training')
    mixed_precision: str = option('auto', (
        'auto: mixed_float16 on CUDA GPUs, mixed_bfloat16 on TPUs and on CPUs that support '
        'it, float32 otherwise.'), 'devices')
    # A boolean, so a bare --jit_compile cannot take the next argument as its value.
    jit_compile: bool | None = option(
        None, 'XLA: on with GPUs unless --nojit_compile; --jit_compile forces it on.', 'devices')
    strategy: str = option('auto', (
        'auto: multi_worker when TF_CONFIG is set, mirrored with several GPUs, one_device '
        'with one, default otherwise.'), 'devices')
    export_saved_model: bool = option(True, (
        'Also write saved_model/ (uint8 images in, probabilities out) for TF Serving; '
        'on a CPU the export takes about as long as tracing the model.'), 'run')
    evaluation_split: str = option(
        'auto', 'Split for metrics.json: auto (test if labelled, else validation).', 'run')
    steps_per_epoch: int | None = option(
        None, 'Cap on training steps per epoch (for smoke runs).', 'training')
    deterministic: bool = option(False, (
        "TensorFlow's op determinism: the same flags give bitwise the same weights, and a "
        'killed run resumed ends with the weights of an uninterrupted one. Slower on GPUs.'),
        'devices')
    overwrite: bool = option(False, (
        'Start afresh in a --model_dir that holds a run, whatever its flags (its files are '
        'replaced). Without it, a rerun resumes, and refuses flags that change the result.'),
        'run')

    def validate(self) -> 'TrainConfig':
        """Checks the values a user can get wrong; returns self."""
        self.input.validate()
        if self.freeze_epochs < 0 or self.fine_tune_epochs < 0 or (
                self.frozen_epochs() + self.fine_tune_epochs < 1):
            raise UserInputError(
                f'--freeze_epochs={self.freeze_epochs} --fine_tune_epochs='
                f'{self.fine_tune_epochs}: epochs must not be negative, and one at least'
                + (' (--weights=none has no freeze phase)' if self.weights == 'none' else ''))
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f'--optimizer={self.optimizer}: use one of {", ".join(OPTIMIZERS)}')
        if self.mixed_precision not in PRECISIONS:
            raise UserInputError(
                f'--mixed_precision={self.mixed_precision}: use one of {", ".join(PRECISIONS)}')
        if self.strategy not in STRATEGIES:
            raise UserInputError(f'--strategy={self.strategy}: use one of {", ".join(STRATEGIES)}')
        if self.learning_rate <= 0 or self.fine_tune_learning_rate <= 0:
            raise UserInputError('learning rates must be positive')
        if not 0 <= self.dropout < 1:
            raise UserInputError(f'--dropout={self.dropout}: must be in [0, 1)')
        if not 0 <= self.batch_norm_momentum < 1:
            raise UserInputError(
                f'--batch_norm_momentum={self.batch_norm_momentum}: must be in [0, 1)')
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UserInputError(f'--steps_per_epoch={self.steps_per_epoch}: must be positive')
        if self.weight_decay < 0:
            raise UserInputError(f'--weight_decay={self.weight_decay}: must not be negative')
        return self

    def frozen_epochs(self) -> int:
        """The epochs of the freeze phase: none from random weights.

        A head trained on the features of a random, frozen backbone learns
        nothing the fine-tuning can use, and its epochs would only cost time.
        """
        return 0 if self.weights == 'none' else self.freeze_epochs

    def scaled_learning_rate(self, phase: str) -> float:
        """A phase's peak learning rate, scaled linearly to the global batch."""
        base = self.learning_rate if phase == 'freeze' else self.fine_tune_learning_rate
        return base * self.input.batch_size / REFERENCE_BATCH_SIZE


# Flags a resumed run may change: they do not change what it computes.
# --records_dir may name another copy of the same records; the records'
# fingerprint is compared instead.
RESUME_NEUTRAL_FLAGS = ('records_dir', 'model_dir', 'cache', 'verify_checksums',
                        'export_saved_model', 'overwrite')


def flat_flags(config: TrainConfig) -> dict:
    """Flag name -> value of a training config, nested configs included."""
    return _flatten(dataclasses.asdict(config))


def _flatten(values: dict) -> dict:
    flat = {}
    for name, value in values.items():
        flat.update(_flatten(value) if isinstance(value, dict) else {name: value})
    return flat


# Values earlier versions recorded, and what they are now: --jit_compile was
# the string auto|true|false.
_FORMER_VALUES = {'jit_compile': {'auto': None, 'true': True, 'false': False}}


# What config.json says of the records a run trained on (`train.write_config`).
_RECORDS_ENTRY = {'fingerprint': str, 'class_names': tuple[str, ...], 'records_dir': str}


def read_run_config(path: str) -> dict:
    """A run's config.json, checked: its "config" holds TrainConfig's fields,
    each of its type, and its "records", when there, what the trainer writes.

    A field missing is an older version's (it counts as its default; so in
    "records"); an unknown one is refused, as is a value of another type. The other keys
    (versions, devices, the command) are only read by people.

    Raises:
        UserInputError: one line naming the file and the key.
    """
    saved = run_folder.read_json(path)
    try:
        json_fields.check_object(saved, 'the file')
        if 'config' not in saved:
            raise json_fields.FieldError('lacks the key config')
        values = json_fields.check_fields(_current_values(saved['config']), TrainConfig,
                                          'config.', required=False)
        if 'records' in saved:
            entry = json_fields.check_object(saved['records'], 'records')
            for key, kind in _RECORDS_ENTRY.items():
                if key in entry:  # Each is missing from some older version's.
                    json_fields.check_type(entry[key], kind, f'records.{key}')
    except json_fields.FieldError as error:
        raise UserInputError(f'{path}: {error}') from None
    try:
        _saved_train_config(values).validate()
    except UserInputError as error:
        raise UserInputError(f'{path}: config holds {error}') from None
    return saved


def _saved_train_config(values: dict) -> TrainConfig:
    """The TrainConfig of checked saved values; a field missing takes its default."""
    own = {name: value for name, value in values.items() if name != 'input'}
    return TrainConfig(**own, input=InputConfig(**values.get('input', {})))


def _current_values(config_values):
    """The values of a saved config as this version writes them (`_FORMER_VALUES`)."""
    if not isinstance(config_values, dict):
        return config_values
    return {name: _FORMER_VALUES[name].get(value, value)
            if name in _FORMER_VALUES and isinstance(value, str) else value
            for name, value in config_values.items()}


def changed_flags(saved: dict, config: TrainConfig) -> list[tuple[str, object, object]]:
    """(flag, saved value, new value) of each flag that changes the result.

    `saved` is the config of an earlier run, as `dataclasses.asdict` gave it;
    a flag it lacks (an older version) counts as its default, and a value an
    older version wrote is read as this version writes it.
    """
    old = {name: _FORMER_VALUES[name].get(value, value) if name in _FORMER_VALUES else value
           for name, value in _flatten(saved).items()}
    defaults = flat_flags(TrainConfig())
    return [(name, old.get(name, defaults[name]), value)
            for name, value in flat_flags(config).items()
            if name not in RESUME_NEUTRAL_FLAGS and old.get(name, defaults[name]) != value]


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How `scripts/launch_local.py` starts a multi-worker job on one machine."""
    num_workers: int = option(2, 'Training processes to start, each a worker of one cluster.')
    host: str = option('localhost', 'Address the workers listen on and reach each other at.')
    stop_seconds: float = option(
        10.0, 'After a worker fails, how long the others get to stop before SIGKILL.')

    def validate(self) -> 'LaunchConfig':
        """Checks the values a user can get wrong; returns self."""
        _check_at_least('num_workers', self.num_workers, 1)
        if self.stop_seconds < 0:
            raise UserInputError(f'--stop_seconds={self.stop_seconds}: must not be negative')
        return self


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """How `scripts/evaluate.py` evaluates a model of a run on a labelled split."""
    model_dir: str = option(MODEL_DIR, 'The run folder.')
    model: str = option(run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
    records_dir: str = option(RECORDS_DIR, 'The records folder.')
    split: str = option('auto', 'A labelled split; auto: test if labelled, else validation.')
    batch_size: int = option(BATCH_SIZE, 'Images per prediction batch.')
    output: str | None = option(
        None, 'Where to write the metrics; default <model_dir>/metrics-<model>-<split>.json.')
    predictions_output: str | None = option(None, (
        'Where to write the predictions; default <model_dir>/predictions-<model>-<split>.npz.'))

    def validate(self) -> 'EvaluateConfig':
        """Checks the values a user can get wrong; returns self."""
        _check_at_least('batch_size', self.batch_size, 1)
        return self


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """What `scripts/predict.py` classifies: the test records, or your own images."""
    model_dir: str = option(MODEL_DIR, 'The run folder.')
    model: str = option(run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
    records_dir: str = option(RECORDS_DIR, 'The records folder, with a test split.')
    images: tuple[str, ...] = option((), (
        'Classify these images instead of the test records: PNG or JPEG files, folders or '
        'globs, comma-separated.'))
    output: str | None = option(None, (
        'The CSV to write; default <model_dir>/submission-<model>.csv, or with --images '
        '<model_dir>/image-predictions-<model>.csv.'))
    batch_size: int = option(BATCH_SIZE, 'Images per prediction batch.')

    def validate(self) -> 'PredictConfig':
        """Checks the values a user can get wrong; returns self."""
        _check_at_least('batch_size', self.batch_size, 1)
        return self


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """Which figures `scripts/plot.py` draws, from which run folders."""
    model_dir: str | None = option(None, 'The run folder to plot (local or gs://).')
    output_dir: str | None = option(None, (
        'Where to write the PNGs; by default the run figures go into --model_dir and the '
        'comparison into the first folder of --compare.'))
    compare: tuple[str, ...] = option((), (
        'Comma-separated run folders whose training and validation curves to overlay in '
        'compare_loss.png and compare_accuracy.png.'))
    model: str = option(run_folder.MODEL_OF_RECORD, run_folder.MODEL_FLAG_HELP)
    split: str | None = option(None, (
        "The split the model's figures show; default: the trainer's (the split of "
        'metrics.json).'))

    def validate(self) -> 'PlotConfig':
        """Checks the values a user can get wrong; returns self."""
        if not self.model_dir and not self.compare:
            raise UserInputError('nothing to plot: give --model_dir=RUN_FOLDER or '
                                 '--compare=RUN_FOLDER,RUN_FOLDER')
        return self


BENCHMARK_SUITES = ('convert', 'input', 'train', 'data_service')
# Runs per measurement when --repeats is not given; the fastest is kept.
BENCHMARK_REPEATS = {'convert': 1, 'input': 3, 'train': 3, 'data_service': 3}


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What `scripts/benchmark.py` measures, each entry against its baseline."""
    suite: str = option('convert', f'Which measurements: {", ".join(BENCHMARK_SUITES)}.')
    data_dir: str = option(
        '../shared/data', "Folder (or zip) with Kaggle's cifar-10.zip, for --suite=convert.")
    records_dir: str = option(RECORDS_DIR, 'Converted records, for every suite but convert.')
    batch_size: int = option(BATCH_SIZE, 'Global batch size, for every suite but convert.')
    image_size: int = option(32, 'Model input side, for --suite=train.')
    service_workers: int = option(
        2, 'tf.data service workers started in-process, for --suite=data_service.')
    # Fewer steps and turns gave ratios from 0.72x to 1.68x on a shared 2-core machine.
    steps: int = option(30, 'Timed training steps, for --suite=train.')
    repeats: int | None = option(None, (
        'Runs per measurement; the fastest is kept (default: ' + ', '.join(
            f'{count} for {suite}' for suite, count in BENCHMARK_REPEATS.items()) + ').'))
    output_json: str | None = option(None, 'Where to write the results as JSON.')

    def validate(self) -> 'BenchmarkConfig':
        """Checks the values a user can get wrong; returns self."""
        if self.suite not in BENCHMARK_SUITES:
            raise UserInputError(
                f'--suite={self.suite}: use one of {", ".join(BENCHMARK_SUITES)}')
        _check_at_least('batch_size', self.batch_size, 1)
        _check_at_least('image_size', self.image_size, 32)
        _check_at_least('service_workers', self.service_workers, 1)
        _check_at_least('steps', self.steps, 1)
        if self.repeats is not None:
            _check_at_least('repeats', self.repeats, 1)
        return self

    def runs_per_measurement(self) -> int:
        """--repeats, or the suite's default."""
        return self.repeats or BENCHMARK_REPEATS[self.suite]


DATA_SERVICE_ROLES = ('all', 'dispatcher', 'worker')
MAX_PORT = 65535


@dataclasses.dataclass(frozen=True)
class DataServiceConfig:
    """The tf.data service `scripts/data_service.py` starts."""
    role: str = option('all', (
        'all: a dispatcher and --num_workers workers in this process; dispatcher; or '
        'worker (of --dispatcher).'))
    port: int = option(5050, 'Dispatcher port (role all or dispatcher).')
    num_workers: int = option(1, 'Workers to start (role all or worker).')
    dispatcher: str | None = option(None, 'host:port of the dispatcher (role worker).')

    def validate(self) -> 'DataServiceConfig':
        """Checks the values a user can get wrong; returns self."""
        if self.role not in DATA_SERVICE_ROLES:
            raise UserInputError(
                f'--role={self.role}: use one of {", ".join(DATA_SERVICE_ROLES)}')
        if not 1 <= self.port <= MAX_PORT:
            raise UserInputError(f'--port={self.port}: must be between 1 and {MAX_PORT}')
        _check_at_least('num_workers', self.num_workers, 1)
        if self.role == 'worker' and not self.dispatcher:
            raise UserInputError('--role=worker needs --dispatcher=host:port')
        return self
