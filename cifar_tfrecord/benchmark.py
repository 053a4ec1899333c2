"""Throughput measurements, each against a baseline measured in the same run.

The machines this runs on are shared and noisy, so every figure is reported
next to its baseline from the same run, and each measurement is repeated and
the best kept. Nothing here is a test: timing never gates the test suite.
"""

import dataclasses
import os
import shutil
import tempfile
import time
import zipfile
from typing import Callable

import numpy as np
import PIL.Image
import py7zr
import py7zr.io

from cifar_tfrecord import convert
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    images: int
    seconds: float
    baseline: str | None = None
    # This result's throughput over its baseline's (higher is faster).
    speedup: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    def to_json(self) -> dict:
        return {'name': self.name, 'images_per_second': round(self.images_per_second, 1),
                'seconds': round(self.seconds, 3), 'images': self.images,
                'baseline': self.baseline,
                'speedup': None if self.speedup is None else round(self.speedup, 3)}


def best_time(function: Callable[[], object], repeats: int) -> float:
    """The shortest of `repeats` timed calls: the least disturbed by others."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def relative(name: str, images: int, seconds: float, baseline: Result) -> Result:
    speedup = baseline.seconds / seconds * images / baseline.images
    return Result(name, images, seconds, baseline.name, speedup)


# ----------------------------------------------------------------------------
# Conversion.


def convert_suite(data_dir: str, repeats: int = 1) -> list[Result]:
    """Conversion throughput from Kaggle's zip and from extracted PNGs.

    Baselines: bare py7zr decompression of the same archives (the physical
    floor of the zip), and a plain PIL loop that loads every extracted PNG
    into one numpy array.
    """
    zip_path = sources.KaggleLayout(data_dir).path
    zip_path = zip_path if zip_path.endswith('.zip') else os.path.join(
        zip_path, sources.COMPETITION_ZIP)
    with tempfile.TemporaryDirectory(prefix='cifar_benchmark_') as work_dir:
        _warm_up(work_dir)
        images = _count_images(zip_path)
        decompress = Result('decompress_7z', images,
                            best_time(lambda: _decompress(zip_path), repeats))
        from_zip = best_time(lambda: _convert(zip_path, work_dir, 'raw'), repeats)
        extracted = _extract(zip_path, work_dir)
        pil_loop = Result('pil_loop_extracted', images,
                          best_time(lambda: _pil_loop(extracted), repeats))
        results = [decompress, relative('convert_zip', images, from_zip, decompress), pil_loop]
        for encoding in ('raw', 'png'):
            seconds = best_time(lambda: _convert(extracted, work_dir, encoding), repeats)
            results.append(relative(f'convert_extracted_{encoding}', images, seconds, pil_loop))
    return results


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
