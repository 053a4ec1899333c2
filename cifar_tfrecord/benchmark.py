"""Throughput measurements, each against a baseline measured in the same run.

The machines this runs on are shared and noisy, so every figure is reported
next to its baseline from the same run, and each measurement is repeated and
the best kept. Nothing here is a test: timing never gates the test suite.
"""

import dataclasses
import functools
import os
import shutil
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
from absl import logging

from cifar_tfrecord import convert
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig, InputConfig, TrainConfig


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    images: int
    seconds: float
    baseline: str | None = None
    # This result's throughput over its baseline's (higher is faster).
    speedup: float | None = None
    # For a measurement run in a process of its own: the peak resident
    # memory of that process and of the processes it started, the largest.
    peak_resident_bytes: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    def to_json(self) -> dict:
        return {'name': self.name, 'images_per_second': round(self.images_per_second, 1),
                'seconds': round(self.seconds, 3), 'images': self.images,
                'baseline': self.baseline,
                'speedup': None if self.speedup is None else round(self.speedup, 3),
                'peak_resident_bytes': self.peak_resident_bytes}


def best_time(function: Callable[[], object], repeats: int) -> float:
    """The shortest of `repeats` timed calls: the least disturbed by others."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def best_times_in_turns(functions: dict[str, Callable[[], object]],
                        repeats: int) -> dict[str, float]:
    """The best time of each function, over `repeats` rounds of one call each.

    Taken in turns, no function gets all the quiet (or busy) moments of a
    shared machine, so their ratios hold even when its speed changes.
    """
    seconds = dict.fromkeys(functions, float('inf'))
    for _ in range(repeats):
        for name, function in functions.items():
            seconds[name] = min(seconds[name], best_time(function, repeats=1))
    return seconds


def relative(name: str, images: int, seconds: float, baseline: Result,
             peak_resident_bytes: int | None = None) -> Result:
    speedup = baseline.seconds / seconds * images / baseline.images
    return Result(name, images, seconds, baseline.name, speedup, peak_resident_bytes)


# ----------------------------------------------------------------------------
# Conversion.


def convert_suite(data_dir: str, repeats: int = 1) -> list[Result]:
    """Conversion throughput from Kaggle's zip and from extracted PNGs, and
    the converter's peak memory.

    Baselines: bare py7zr decompression of the same archives (the physical
    floor of the zip), and a plain PIL loop that loads every extracted PNG
    into one numpy array. Memory is measured in processes of their own: the
    converter's, against one that imports what the converter imports and
    decompresses the same archives into nothing (the least a converter built
    on TensorFlow and py7zr can take).
    """
    zip_path = sources.KaggleLayout(data_dir).path
    zip_path = zip_path if zip_path.endswith('.zip') else os.path.join(
        zip_path, sources.COMPETITION_ZIP)
    with tempfile.TemporaryDirectory(prefix='cifar_benchmark_') as work_dir:
        _warm_up(work_dir)
        images = _count_images(zip_path)
        extracted = _extract(zip_path, work_dir)
        seconds = best_times_in_turns({
            'decompress_7z': lambda: _decompress(zip_path),
            'convert_zip': lambda: _convert(zip_path, work_dir, 'raw'),
            'pil_loop_extracted': lambda: _pil_loop(extracted),
            'convert_extracted_raw': lambda: _convert(extracted, work_dir, 'raw'),
            'convert_extracted_png': lambda: _convert(extracted, work_dir, 'png'),
        }, repeats)
        decompress = Result('decompress_7z', images, seconds['decompress_7z'])
        pil_loop = Result('pil_loop_extracted', images, seconds['pil_loop_extracted'])
        results = [decompress, relative('convert_zip', images, seconds['convert_zip'], decompress),
                   pil_loop]
        for encoding in ('raw', 'png'):
            name = f'convert_extracted_{encoding}'
            results.append(relative(name, images, seconds[name], pil_loop))
        results += _memory_results(zip_path, work_dir, images, repeats)
    return results


# Run by `python -c`, with the zip (and the output folder) as arguments.
_DECOMPRESS_PROGRAM = (
    'import sys; from cifar_tfrecord import benchmark, convert; '
    'benchmark._decompress(sys.argv[1])')
_CONVERT_PROGRAM = (
    'import sys; from cifar_tfrecord import convert; '
    'from cifar_tfrecord.config import ConvertConfig; '
    "convert.convert(ConvertConfig(source='dir', data_dir=sys.argv[1], output_dir=sys.argv[2]))")


def _memory_results(zip_path: str, work_dir: str, images: int, repeats: int) -> list[Result]:
    """The converter's peak memory, and its floor's, each in a fresh process.

    The time of each includes the process's start (TensorFlow's import).
    """
    output_dir = os.path.join(work_dir, 'records_process')
    measured = {'decompress_7z_process': [], 'convert_zip_process': []}
    for _ in range(repeats):  # In turns, as best_times_in_turns does.
        measured['decompress_7z_process'].append(
            _measured_python(_DECOMPRESS_PROGRAM, zip_path))
        shutil.rmtree(output_dir, ignore_errors=True)
        measured['convert_zip_process'].append(
            _measured_python(_CONVERT_PROGRAM, zip_path, output_dir))
    # The shortest time, as elsewhere; the largest peak, the one to plan for.
    floor_runs, convert_runs = measured.values()
    floor = Result('decompress_7z_process', images, min(run.seconds for run in floor_runs),
                   peak_resident_bytes=max(run.peak_resident_bytes for run in floor_runs))
    return [floor, relative('convert_zip_process', images,
                            min(run.seconds for run in convert_runs), floor,
                            max(run.peak_resident_bytes for run in convert_runs))]


def _measured_python(program: str, *arguments: str) -> 'MeasuredRun':
    run = run_measuring_memory([sys.executable, '-c', program, *arguments])
    if run.status != 0:
        raise RuntimeError(f'the measured process failed ({run.status}): {run.stderr[-2000:]}')
    return run


# ----------------------------------------------------------------------------
# Peak memory of a process.
#
# Linux counts into a process's peak resident memory (ru_maxrss, from
# getrusage or wait4) the memory of the process it was forked from, as it
# was when it started another program: a process started by a test or a
# benchmark, which holds TensorFlow, would report the size of its parent. So
# the measured command is started by a small Python process of its own,
# which prints the peak of its children alone.

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


def run_measuring_memory(command: list[str], env: dict | None = None) -> MeasuredRun:
    """Runs `command` to its end, its stdout discarded, and measures it."""
    start = time.perf_counter()
    finished = subprocess.run([sys.executable, '-c', _MEASURING_PROGRAM, *command],
                              capture_output=True, env=env)
    seconds = time.perf_counter() - start
    peak_kilobytes = int(finished.stdout.split()[-1])  # Linux counts kilobytes.
    return MeasuredRun(finished.returncode, finished.stderr.decode(errors='replace'), seconds,
                       peak_kilobytes << 10)


def _warm_up(work_dir: str) -> None:
    """One small conversion, so TF's start-up and tracing are not timed."""
    config = ConvertConfig(source='sample', sample_images_per_class=20, sample_test_images=10,
                           output_dir=os.path.join(work_dir, 'warm_up'), num_shards=2)
    convert.convert(config)


def _count_images(zip_path: str) -> int:
    with zipfile.ZipFile(zip_path) as archive:
        count = 0
        for name in ('train.7z', 'test.7z'):
            if name in archive.namelist():
                with py7zr.SevenZipFile(archive.open(name)) as seven_zip:
                    count += sum(1 for entry in seven_zip.list() if not entry.is_directory)
    return count


def _decompress(zip_path: str) -> None:
    with zipfile.ZipFile(zip_path) as archive:
        for name in ('train.7z', 'test.7z'):
            if name in archive.namelist():
                with py7zr.SevenZipFile(archive.open(name)) as seven_zip:
                    seven_zip.extractall(factory=py7zr.io.NullIOFactory())


def _convert(data_dir: str, work_dir: str, encoding: str) -> None:
    output_dir = os.path.join(work_dir, f'records_{encoding}')
    shutil.rmtree(output_dir, ignore_errors=True)
    convert.convert(ConvertConfig(source='dir', data_dir=data_dir, output_dir=output_dir,
                                  encoding=encoding))


def _extract(zip_path: str, work_dir: str) -> str:
    folder = os.path.join(work_dir, 'extracted')
    os.makedirs(folder)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extract(sources.LABELS_CSV, folder)
        for name in ('train.7z', 'test.7z'):
            if name in archive.namelist():
                with py7zr.SevenZipFile(archive.open(name)) as seven_zip:
                    seven_zip.extractall(folder)
    return folder


def _pil_loop(folder: str) -> np.ndarray:
    """The plain approach: every PNG through PIL into one numpy array."""
    paths = [os.path.join(folder, name, file) for name in ('train', 'test')
             if os.path.isdir(os.path.join(folder, name))
             for file in os.listdir(os.path.join(folder, name))]
    images = np.empty((len(paths), 32, 32, 3), np.uint8)
    for index, path in enumerate(paths):
        with PIL.Image.open(path) as image:
            images[index] = np.asarray(image.convert('RGB'))
    return images


# ----------------------------------------------------------------------------
# Input pipeline.

# One GPU training ResNet50 at 224 px consumes about this many images/s.
GPU_IMAGES_PER_SECOND = 3000


def input_suite(records_dir: str, batch_size: int = 256, repeats: int = 3) -> list[Result]:
    """Input throughput of the pipeline, stage by stage, against baselines.

    Each comparison does the same work on both sides, at 32 px. The cold
    epoch is measured as the trainer runs it by default: uint8 images leave
    the host, which only one-hot encodes, and the model normalizes on the
    device; and again with normalization on the host (`_host_normalize`).
    Every other configuration normalizes and one-hot encodes on the host,
    as the in-memory baseline does.
    """
    base = InputConfig(records_dir=records_dir, batch_size=batch_size, image_size=32,
                       upsample_on='host', augment=False)
    manifest = records.load_manifest(records_dir)
    count = manifest.splits['train'].num_examples
    steps = count // batch_size  # Training datasets repeat: one epoch is this.
    in_memory = Result('in_memory', *_epoch(_in_memory_dataset(base), repeats))
    results = [in_memory]
    for suffix, config in (('', dataclasses.replace(base, upsample_on='device')),
                           ('_host_normalize', base)):
        naive = Result(f'naive_per_example{suffix}',
                       *_epoch(_naive_dataset(config, manifest), repeats))
        results += [naive, relative(f'pipeline_cold{suffix}',
                                    *_cold_epoch(config, steps, repeats), naive)]
    warm_configs = {
        'pipeline_warm': base,
        'pipeline_warm_augmented': dataclasses.replace(base, augment=True),
    }
    for name, config in warm_configs.items():
        dataset, _ = pipeline.make_dataset(config, 'train', training=True)
        _time_epoch(dataset, steps)  # Fills the cache.
        results.append(relative(name, *_epoch(dataset, repeats, steps), in_memory))
    upsampled = dataclasses.replace(base, augment=True, image_size=224)
    dataset, _ = pipeline.make_dataset(upsampled, 'train', training=True)
    _time_epoch(dataset, steps)
    limit = max(1, 8192 // batch_size)  # Slow: a part of an epoch is enough.
    results.append(relative('pipeline_host_upsample_224',
                            *_epoch(dataset, repeats, limit), in_memory))
    results.extend(_stage_breakdown(base, manifest, repeats, limit))
    logging.info('train split: %d images', count)
    return results


def _cold_epoch(config: InputConfig, steps: int, repeats: int) -> tuple[int, float]:
    """(images, seconds) of the fastest first epoch, each of a fresh pipeline."""
    runs = []
    for _ in range(repeats):  # A fresh pipeline each time: an empty cache.
        dataset, _ = pipeline.make_dataset(config, 'train', training=True)
        runs.append(_time_epoch(dataset, steps))
    return min(runs, key=lambda run: run[1] / run[0])


def per_core(result: Result) -> float:
    return result.images_per_second / os.cpu_count()


def cores_to_feed_a_gpu(result: Result) -> float:
    """CPU cores this configuration needs to feed one GPU at 3,000 images/s."""
    return GPU_IMAGES_PER_SECOND / per_core(result)


def _time_epoch(dataset, limit: int | None = None) -> tuple[int, float]:
    images = 0
    start = time.perf_counter()
    for batch in dataset.take(limit) if limit else dataset:
        images += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    return images, time.perf_counter() - start


def _epoch(dataset, repeats: int, limit: int | None = None) -> tuple[int, float]:
    """(images, seconds) of the fastest of `repeats` epochs, after a warm-up."""
    for _ in dataset.take(3):
        pass
    runs = [_time_epoch(dataset, limit) for _ in range(repeats)]
    return min(runs, key=lambda run: run[1] / run[0])


def _in_memory_dataset(config: InputConfig) -> tf.data.Dataset:
    """The plain baseline: numpy arrays in RAM, reshuffled and batched."""
    examples = list(records.read_split(config.records_dir, 'train'))
    images = np.stack([image for _, image, _ in examples])
    labels = np.array([label for _, _, label in examples])
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(labels), seed=0, reshuffle_each_iteration=True)
    dataset = dataset.batch(config.batch_size, drop_remainder=True)
    dataset = dataset.map(lambda batch_images, batch_labels: pipeline.finish(
        batch_images, batch_labels, config, training=True), num_parallel_calls=pipeline.AUTOTUNE)
    return dataset.prefetch(pipeline.AUTOTUNE)


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
    dataset = tf.data.TFRecordDataset(paths).map(parse_one, num_parallel_calls=pipeline.AUTOTUNE)
    dataset = dataset.batch(config.batch_size, drop_remainder=True)
    dataset = dataset.map(lambda images, labels: pipeline.finish(
        images, labels, config, training=True), num_parallel_calls=pipeline.AUTOTUNE)
    return dataset.prefetch(pipeline.AUTOTUNE)


def _stage_breakdown(config: InputConfig, manifest: records.Manifest, repeats: int,
                     limit: int) -> list[Result]:
    """The pipeline built up one stage at a time, each step timed warm."""
    paths = records.shard_paths(config.records_dir, 'train', manifest)
    count = manifest.splits['train'].num_examples
    batch = config.batch_size
    steps = count // batch  # From stage 3 on, batches come epoch after epoch.

    def read():
        return pipeline.read(paths)

    def parsed():
        return pipeline.decoded(read(), manifest.encoding)

    def batched(augment: bool = False):
        images = pipeline.cached(parsed(), '')

        def epoch(number):
            key = pipeline.epoch_key(config.seed, number)
            batches = pipeline.shuffled_batches(images, config, key, batch, steps, count)
            return pipeline.augmented(batches, key) if augment else batches

        return tf.data.Dataset.counter().flat_map(epoch)

    def augmented():
        return batched(augment=True)

    def normalized():
        return augmented().map(lambda images, labels: (
            pipeline.normalize(images, config.normalization), pipeline.one_hot(labels, 0.1)),
            num_parallel_calls=pipeline.AUTOTUNE)

    def upsampled():
        return normalized().map(lambda images, labels: (
            pipeline.upsample(images, 224, config.upsample_method), labels),
            num_parallel_calls=pipeline.AUTOTUNE)

    stages = [('stage_1_read', lambda: read().batch(batch), None),
              ('stage_2_parse_decode', lambda: parsed().batch(batch), None),
              ('stage_3_cache_shuffle_batch', batched, steps),
              ('stage_4_augment', augmented, steps),
              ('stage_5_normalize_one_hot', normalized, steps),
              ('stage_6_upsample_224', upsampled, limit)]
    results = []
    for name, build, stage_limit in stages:
        dataset = build().prefetch(pipeline.AUTOTUNE)
        _time_epoch(dataset, stage_limit and steps)  # Fills any cache.
        results.append(Result(name, *_epoch(dataset, repeats, stage_limit)))
    return results


# ----------------------------------------------------------------------------
# tf.data service.


def data_service_suite(records_dir: str, batch_size: int = 256, repeats: int = 3,
                       service_workers: int = 2) -> list[Result]:
    """Training input through a tf.data service against the same pipeline in-process.

    Both read the training split with augmentation, as training does. The
    service (a dispatcher and `service_workers` workers) runs in this
    process, on the same cores, so the ratio is its overhead here: the RPCs,
    and reading the files every epoch where the in-process pipeline caches.
    On other hosts its workers add CPU instead.
    """
    config = InputConfig(records_dir=records_dir, batch_size=batch_size, image_size=32)
    steps = records.load_manifest(records_dir).splits['train'].num_examples // batch_size
    dataset, _ = pipeline.make_dataset(config, 'train', training=True)
    _time_epoch(dataset, steps)  # Fills the cache.
    in_process = Result('pipeline_in_process', *_epoch(dataset, repeats, steps))
    dispatcher, workers = start_data_service(service_workers)
    try:
        served_config = dataclasses.replace(config, data_service=dispatcher.target)
        served, _ = pipeline.make_dataset(served_config, 'train', training=True)
        seconds = _epoch(served, repeats, steps)
    finally:
        for worker in workers:
            worker.stop()
        dispatcher.stop()
    return [in_process, relative(f'data_service_{service_workers}_workers', *seconds, in_process)]


def start_data_service(num_workers: int):
    """A tf.data service dispatcher and its workers, in this process, on free ports."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split('://', 1)[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address))
               for _ in range(num_workers)]
    return dispatcher, workers


# ----------------------------------------------------------------------------
# Training.


# Training fed from the records at this fraction of the speed on one batch
# held in memory, or more, is not held back by its input: the two differ by
# less than the noise of a shared machine.
INPUT_KEEPS_UP = 0.95


def train_suite(records_dir: str, batch_size: int = 256, image_size: int = 32,
                steps: int = 10, precision: str = 'auto', repeats: int = 2) -> list[Result]:
    """Training throughput fed by the pipeline against fed by synthetic data.

    The same model, flags and step function; only the input differs, so the
    ratio shows whether input holds training back.
    """
    from cifar_tfrecord import train  # Heavy: only this suite needs Keras models.
    config = TrainConfig(
        input=InputConfig(records_dir=records_dir, batch_size=batch_size,
                          image_size=image_size),
        weights='none', mixed_precision=precision, freeze_epochs=0, fine_tune_epochs=1)
    keras.mixed_precision.set_global_policy(train.resolve_precision(precision))
    pipeline_data, _ = pipeline.make_dataset(config.input, 'train', training=True)
    inputs = {'train_synthetic': _synthetic_like(pipeline_data), 'train_pipeline': pipeline_data}
    # One model, traced once: both inputs run exactly the same step function.
    model = train.build(config)
    train.compile_model(model, config, 'fine_tune', steps, 1,
                        train.resolve_jit_compile(config.jit_compile))
    for data in inputs.values():
        model.fit(data, steps_per_epoch=2, epochs=1, shuffle=False, verbose=0)  # Warms up.
    seconds = best_times_in_turns(
        {name: functools.partial(model.fit, data, steps_per_epoch=steps, epochs=1,
                                 shuffle=False, verbose=0)
         for name, data in inputs.items()}, repeats)
    synthetic = Result('train_synthetic', steps * batch_size, seconds['train_synthetic'])
    return [synthetic, relative('train_pipeline', steps * batch_size, seconds['train_pipeline'],
                                synthetic)]


def _synthetic_like(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Endless copies of one batch shaped like the dataset's, held in memory."""
    images, targets = next(iter(dataset))
    return tf.data.Dataset.from_tensors((images, targets)).repeat()
