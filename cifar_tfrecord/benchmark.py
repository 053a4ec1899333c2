"""Throughput measurements, each against a baseline measured in the same run.

The machines this runs on are shared and noisy, so every figure is reported
next to its baseline from the same run. Each measurement runs several times,
in turns with the others, and reports its median and its spread: an entry
whose runs differ by more than 10% of the median is flagged as noisy.
`tests/test_benchmark.py` guards the input pipeline's ratios.
"""

import dataclasses
import functools
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Callable

import keras
import numpy as np
import PIL.Image
import py7zr
import py7zr.io
import tensorflow as tf

from cifar_tfrecord import convert
from cifar_tfrecord import faults
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig, InputConfig, TrainConfig


# Runs that differ by more than this fraction of their median are noisy.
NOISY_SPREAD = 0.10


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    images: int  # Per run.
    runs: tuple[float, ...]  # Seconds.
    baseline: str | None = None
    # This result's throughput over its baseline's, of the medians (higher is faster).
    speedup: float | None = None
    # For a measurement run in a process of its own: the peak resident
    # memory of that process and of the processes it started, the largest.
    peak_resident_bytes: int | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def spread(self) -> float:
        """(slowest - fastest run) / median."""
        return (max(self.runs) - min(self.runs)) / self.seconds

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), 'runs': [round(run, 3) for run in self.runs],
                'seconds': round(self.seconds, 3),
                'images_per_second': round(self.images_per_second, 1),
                'spread': round(self.spread, 3), 'noisy': self.spread > NOISY_SPREAD,
                'speedup': None if self.speedup is None else round(self.speedup, 3)}


def times_in_turns(functions: dict[str, Callable[[], object]],
                   repeats: int) -> dict[str, tuple[float, ...]]:
    """The seconds of each function's calls, over `repeats` rounds of one call
    each: in turns, no function gets all the quiet (or busy) moments of a
    shared machine, so their ratios hold even when its speed changes."""
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            seconds[name].append(time.perf_counter() - start)
    return {name: tuple(runs) for name, runs in seconds.items()}


def relative(result: Result, baseline: Result) -> Result:
    """`result` with its speedup over `baseline`."""
    speedup = baseline.seconds / result.seconds * result.images / baseline.images
    return dataclasses.replace(result, baseline=baseline.name, speedup=speedup)


def convert_suite(data_dir: str, repeats: int = 1) -> list[Result]:
    """Conversion throughput from Kaggle's zip and from extracted PNGs, and
    the converter's peak memory.

    Baselines: bare py7zr decompression of the same archives (the floor of
    the zip); a plain PIL loop that loads every extracted PNG into one numpy
    array; and, for memory, a process that imports what the converter does
    and decompresses the archives into nothing.
    """
    zip_path = sources.KaggleLayout(data_dir).path
    if not zip_path.endswith('.zip'):
        zip_path = os.path.join(zip_path, sources.COMPETITION_ZIP)
    with tempfile.TemporaryDirectory(prefix='cifar_benchmark_') as work_dir:
        # One small conversion first, so TF's start-up and tracing are not timed.
        convert.convert(ConvertConfig(
            source='sample', sample_images_per_class=20, sample_test_images=10,
            output_dir=os.path.join(work_dir, 'warm_up'), num_shards=2))
        images = sum(not entry.is_directory for seven_zip in _seven_zips(zip_path)
                     for entry in seven_zip.list())
        extracted = _extract(zip_path, work_dir)
        runs = times_in_turns({
            'decompress_7z': lambda: _decompress(zip_path),
            'convert_zip': lambda: _convert(zip_path, work_dir, 'raw'),
            'pil_loop_extracted': lambda: _pil_loop(extracted),
            'convert_extracted_raw': lambda: _convert(extracted, work_dir, 'raw'),
            'convert_extracted_png': lambda: _convert(extracted, work_dir, 'png'),
        }, repeats)
        results = {name: Result(name, images, seconds) for name, seconds in runs.items()}
        baselines = {'convert_zip': 'decompress_7z', 'convert_extracted_raw': 'pil_loop_extracted',
                     'convert_extracted_png': 'pil_loop_extracted'}
        return [relative(result, results[baselines[name]]) if name in baselines else result
                for name, result in results.items()] + _memory_results(
                    zip_path, work_dir, images, repeats)


# Run by `python -c`, with the zip as its argument.
_DECOMPRESS_PROGRAM = (
    'import sys; from cifar_tfrecord import benchmark, convert; '
    'benchmark._decompress(sys.argv[1])')
# What users run, whose source starts decompressing before TensorFlow loads.
_CONVERT_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'scripts', 'convert.py')


def _memory_results(zip_path: str, work_dir: str, images: int, repeats: int) -> list[Result]:
    """The converter's peak memory, and its floor's, each in a fresh process
    (whose time includes TensorFlow's import)."""
    output_dir = os.path.join(work_dir, 'records_process')
    floor_runs, convert_runs = [], []
    for _ in range(repeats):  # In turns, as times_in_turns does.
        floor_runs.append(run_measuring_memory(
            [sys.executable, '-c', _DECOMPRESS_PROGRAM, zip_path], check=True))
        shutil.rmtree(output_dir, ignore_errors=True)
        convert_runs.append(run_measuring_memory(
            [sys.executable, _CONVERT_SCRIPT, '--source=dir', f'--data_dir={zip_path}',
             f'--output_dir={output_dir}'], check=True))
    # The largest peak: the one to plan for.
    floor = Result('decompress_7z_process', images, tuple(run.seconds for run in floor_runs),
                   peak_resident_bytes=max(run.peak_resident_bytes for run in floor_runs))
    converter = Result('convert_zip_process', images, tuple(run.seconds for run in convert_runs),
                       peak_resident_bytes=max(run.peak_resident_bytes for run in convert_runs))
    return [floor, relative(converter, floor)]


# Linux counts into a process's peak resident memory (ru_maxrss) the memory
# of the process it was forked from: a process started by one that holds
# TensorFlow would report its parent's size. So a small Python process of its
# own starts the measured command, and prints the peak of its children alone.
_MEASURING_PROGRAM = """
import resource, subprocess, sys
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(status if status >= 0 else 128 - status)
"""


@dataclasses.dataclass(frozen=True)
class MeasuredRun:
    status: int  # 128 + the signal's number, when a signal ended it
    stderr: str
    seconds: float
    # The largest peak of the command and the processes it started.
    peak_resident_bytes: int


def run_measuring_memory(command: list[str], env: dict | None = None,
                         check: bool = False) -> MeasuredRun:
    """Runs `command` to its end, its stdout discarded, and measures it;
    with `check`, a failure raises RuntimeError."""
    start = time.perf_counter()
    finished = subprocess.run([sys.executable, '-c', _MEASURING_PROGRAM, *command],
                              capture_output=True, env=env)
    seconds = time.perf_counter() - start
    stderr = finished.stderr.decode(errors='replace')
    if check and finished.returncode:
        raise RuntimeError(f'the measured process failed ({finished.returncode}): '
                           f'{stderr[-2000:]}')
    peak_kilobytes = int(finished.stdout.split()[-1])  # Linux counts kilobytes.
    return MeasuredRun(finished.returncode, stderr, seconds, peak_kilobytes << 10)


def _seven_zips(zip_path: str):
    """Kaggle's train.7z and test.7z (when there), each open in turn."""
    with zipfile.ZipFile(zip_path) as archive:
        for name in ('train.7z', 'test.7z'):
            if name in archive.namelist():
                with py7zr.SevenZipFile(archive.open(name)) as seven_zip:
                    yield seven_zip


def _decompress(zip_path: str) -> None:
    for seven_zip in _seven_zips(zip_path):
        seven_zip.extractall(factory=py7zr.io.NullIOFactory())


def _extract(zip_path: str, work_dir: str) -> str:
    folder = os.path.join(work_dir, 'extracted')
    with zipfile.ZipFile(zip_path) as archive:
        archive.extract(sources.LABELS_CSV, folder)
    for seven_zip in _seven_zips(zip_path):
        seven_zip.extractall(folder)
    return folder


def _convert(data_dir: str, work_dir: str, encoding: str) -> None:
    output_dir = os.path.join(work_dir, f'records_{encoding}')
    shutil.rmtree(output_dir, ignore_errors=True)
    convert.convert(ConvertConfig(source='dir', data_dir=data_dir, output_dir=output_dir,
                                  encoding=encoding))


def _pil_loop(folder: str) -> np.ndarray:
    """The plain approach: every PNG through PIL into one numpy array."""
    return np.stack([np.asarray(PIL.Image.open(path).convert('RGB')) for name in ('train', 'test')
                     for path in glob.glob(os.path.join(folder, name, '*'))])


# Each entry of the input suite with a baseline, and that baseline.
INPUT_BASELINES = {
    'pipeline_cold': 'naive_per_example',
    'pipeline_cold_host_normalize': 'naive_per_example_host_normalize',
    'pipeline_warm': 'in_memory', 'pipeline_warm_augmented': 'in_memory',
    'pipeline_host_upsample_224': 'in_memory'}


def input_suite(records_dir: str, batch_size: int = 256, repeats: int = 5,
                epochs: int = 1) -> list[Result]:
    """Input throughput of the pipeline, stage by stage, against baselines
    doing the same work, at 32 px. The cold epoch is measured as the trainer
    runs it by default (the model normalizes on the device), and with
    normalization on the host (`_host_normalize`), as every other entry is.

    A warm run takes `epochs` epochs from one iterator, as a training run
    does: a few records read many times measure what an epoch costs, not
    what starting an iterator costs.
    """
    base = InputConfig(records_dir=records_dir, batch_size=batch_size, image_size=32,
                       upsample_on='host', augment=False)
    manifest = records.load_manifest(records_dir)
    count = manifest.splits['train'].num_examples
    steps = count // batch_size  # Every dataset here repeats: one epoch is this.
    warm = epochs * steps
    part = max(1, 8192 // batch_size)  # Upsampling is slow: a part of an epoch is enough.
    device = dataclasses.replace(base, upsample_on='device')
    augmented = dataclasses.replace(base, augment=True)
    entries = {
        'in_memory': _warm(_in_memory_dataset(base), warm),
        'naive_per_example': _warm(_naive_dataset(device, manifest), warm),
        'pipeline_cold': _cold(lambda: _training_dataset(device), steps, repeats),
        'naive_per_example_host_normalize': _warm(_naive_dataset(base, manifest), warm),
        'pipeline_cold_host_normalize': _cold(lambda: _training_dataset(base), steps, repeats),
        'pipeline_warm': _warm(_training_dataset(base), warm),
        'pipeline_warm_augmented': _warm(_training_dataset(augmented), warm),
        'pipeline_host_upsample_224': _warm(
            _training_dataset(dataclasses.replace(augmented, image_size=224)), part),
        **_stage_breakdown(base, manifest, epochs, part)}
    return compare(entries, INPUT_BASELINES, repeats)


def compare(entries: dict[str, tuple[int, Callable[[], object]]], baselines: dict[str, str],
            repeats: int) -> list[Result]:
    """Times each entry's function (`repeats` times, in turns), each of which
    handles its entry's number of images, and sets each speedup over its
    entry's baseline."""
    runs = times_in_turns({name: function for name, (_, function) in entries.items()}, repeats)
    results = {name: Result(name, images, runs[name]) for name, (images, _) in entries.items()}
    return [relative(result, results[baselines[name]]) if name in baselines else result
            for name, result in results.items()]


def _training_dataset(config: InputConfig) -> tf.data.Dataset:
    return pipeline.make_dataset(config, 'train', training=True)[0]


def _count(dataset: tf.data.Dataset, limit: int | None = None) -> int:
    """Runs through (`limit` batches of) a dataset; returns its images."""
    return sum(int(tf.shape(tf.nest.flatten(batch)[0])[0])
               for batch in (dataset.take(limit) if limit else dataset))


def _warm(dataset: tf.data.Dataset, limit: int) -> tuple[int, Callable[[], int]]:
    """The images of `limit` batches, and a function running through them,
    once a first run has filled any cache and traced every function."""
    return _count(dataset, limit), functools.partial(_count, dataset, limit)


def _cold(make: Callable[[], tf.data.Dataset], limit: int,
          repeats: int) -> tuple[int, Callable[[], int]]:
    """The same for the first epoch of a fresh dataset each run, its cache
    empty. The datasets are built ahead, so building one is not timed."""
    fresh = [make() for _ in range(repeats)]
    return _count(make(), limit), lambda: _count(fresh.pop(), limit)


def _finished(examples: tf.data.Dataset, config: InputConfig) -> tf.data.Dataset:
    """Examples in training batches, finished as the pipeline finishes them."""
    return examples.batch(config.batch_size, drop_remainder=True).map(
        lambda images, labels: pipeline.finish(images, labels, config, training=True),
        num_parallel_calls=pipeline.AUTOTUNE).prefetch(pipeline.AUTOTUNE)


def _in_memory_dataset(config: InputConfig) -> tf.data.Dataset:
    """The plain baseline: numpy arrays in RAM, reshuffled and batched."""
    _, images, labels = zip(*records.read_split(config.records_dir, 'train'))
    dataset = tf.data.Dataset.from_tensor_slices((np.stack(images), np.array(labels)))
    dataset = dataset.shuffle(len(labels), seed=0, reshuffle_each_iteration=True)
    return _finished(dataset.repeat(), config)


def _naive_dataset(config: InputConfig, manifest: records.Manifest) -> tf.data.Dataset:
    """The usual first attempt: parse and decode one record at a time, no cache."""
    spec = records.feature_spec(manifest.encoding)
    fields = records.schema(manifest.encoding)

    def parse_one(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        image = tf.reshape(tf.io.decode_raw(parsed[fields['image'].key], tf.uint8),
                           records.IMAGE_SHAPE)
        return image, parsed[fields['label'].key]

    paths = records.shard_paths(config.records_dir, 'train', manifest)
    return _finished(tf.data.TFRecordDataset(paths).map(
        parse_one, num_parallel_calls=pipeline.AUTOTUNE).repeat(), config)


def _stage_breakdown(config: InputConfig, manifest: records.Manifest, epochs: int,
                     part: int) -> dict[str, tuple[int, Callable[[], int]]]:
    """The pipeline built up one stage at a time, each step timed warm, over
    `epochs` epochs.

    `config` normalizes on the host, at 32 px, without augmentation. From
    stage 3 on, batches come epoch after epoch, one-hot encoded (which costs
    next to nothing).
    """
    paths = records.shard_paths(config.records_dir, 'train', manifest)
    count = manifest.splits['train'].num_examples
    steps = count // config.batch_size

    def endless(**changes):
        """Training batches of `config` with `changes`, epoch after epoch."""
        changed = dataclasses.replace(config, **changes)
        split = pipeline.cached(pipeline.whole(paths, manifest.encoding), '')
        return tf.data.Dataset.counter().flat_map(
            lambda epoch: pipeline.epoch_batches(split, changed, epoch, config.batch_size,
                                                 steps)).prefetch(pipeline.AUTOTUNE)

    read = pipeline.shard_records(tf.data.Dataset.from_tensor_slices(paths))
    return {'stage_1_read': _warm(read.repeat(), epochs * len(paths)),
            'stage_2_parse_decode': _warm(pipeline.whole(paths, manifest.encoding).repeat(),
                                          epochs),
            'stage_3_cache_shuffle_batch': _warm(endless(upsample_on='device'), epochs * steps),
            'stage_4_augment': _warm(endless(upsample_on='device', augment=True), epochs * steps),
            'stage_5_normalize_one_hot': _warm(endless(augment=True), epochs * steps),
            'stage_6_upsample_224': _warm(endless(augment=True, image_size=224), part)}


def data_service_suite(records_dir: str, batch_size: int = 256, repeats: int = 3,
                       service_workers: int = 2) -> list[Result]:
    """Training input through a tf.data service against the same pipeline in-process.

    The service runs in this process, on the same cores, so the ratio is its
    overhead: the RPCs, and reading the files every epoch where the
    in-process pipeline caches. On other hosts its workers add CPU instead.
    """
    config = InputConfig(records_dir=records_dir, batch_size=batch_size, image_size=32)
    steps = records.load_manifest(records_dir).splits['train'].num_examples // batch_size
    name = f'data_service_{service_workers}_workers'
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))  # A free port.
    address = dispatcher.target.split('://', 1)[1]
    servers = [dispatcher, *(service.WorkerServer(service.WorkerConfig(dispatcher_address=address))
                             for _ in range(service_workers))]
    try:
        served = _training_dataset(dataclasses.replace(config, data_service=dispatcher.target))
        return compare({'pipeline_in_process': _warm(_training_dataset(config), steps),
                        name: _warm(served, steps)}, {name: 'pipeline_in_process'}, repeats)
    finally:
        for server in reversed(servers):
            server.stop()


def train_suite(records_dir: str, batch_size: int = 256, image_size: int = 32,
                steps: int = 10, precision: str = 'auto', repeats: int = 2) -> list[Result]:
    """Training throughput fed by the pipeline against fed by one batch held
    in memory: the same model and step function, so the ratio shows whether
    input holds training back."""
    from cifar_tfrecord import train  # Heavy: only this suite needs Keras models.
    config = TrainConfig(
        InputConfig(records_dir=records_dir, batch_size=batch_size, image_size=image_size),
        weights='none', mixed_precision=precision, freeze_epochs=0, fine_tune_epochs=1)
    keras.mixed_precision.set_global_policy(train.resolve_precision(precision))
    pipeline_data = _training_dataset(config.input)
    # Endless copies of one batch held in memory, shaped like the pipeline's.
    synthetic_data = tf.data.Dataset.from_tensors(next(iter(pipeline_data))).repeat()
    inputs = {'train_synthetic': synthetic_data, 'train_pipeline': pipeline_data}
    # One model, traced once: both inputs run exactly the same step function.
    model = train.build(config)
    train.compile_model(model, config, 'fine_tune', steps, 1,
                        train.resolve_jit_compile(config.jit_compile))
    for data in inputs.values():
        model.fit(data, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)  # Warms up.
    return compare({name: (steps * batch_size, functools.partial(
        model.fit, data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0))
        for name, data in inputs.items()}, {'train_pipeline': 'train_synthetic'}, repeats)


# The recipes whose start `time_to_first_step` measures, in scripts/recipes/.
FIRST_STEP_RECIPES = ('quickstart', 'cpu_scratch')


def time_to_first_step(records_dir: str, repeats: int = 3) -> dict[str, tuple[float, ...]]:
    """Seconds from the start of `scripts/train.py` to the end of its first
    training step, for each recipe of FIRST_STEP_RECIPES, in turns: each run
    is killed there by fault injection (`faults`), into a fresh run folder."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'scripts', 'train.py')
    runs = {recipe: [] for recipe in FIRST_STEP_RECIPES}
    with tempfile.TemporaryDirectory(prefix='cifar_first_step_') as work_dir:
        for attempt in range(repeats):
            for recipe in FIRST_STEP_RECIPES:
                flagfile = os.path.join(os.path.dirname(script), 'recipes', f'{recipe}.flags')
                run = run_measuring_memory(
                    [sys.executable, script, f'--flagfile={flagfile}',
                     f'--records_dir={records_dir}',
                     f'--model_dir={os.path.join(work_dir, f"{recipe}-{attempt}")}'],
                    env={**os.environ, **faults.kill_at('train_step', 1)})
                if faults.KILLED_MESSAGE not in run.stderr:
                    raise RuntimeError(f'{recipe}: the trainer ended ({run.status}) before its '
                                       f'first step: {run.stderr[-2000:]}')
                runs[recipe].append(run.seconds)
    return {recipe: tuple(seconds) for recipe, seconds in runs.items()}
