"""The offline sample: small, learnable, generated, in Kaggle's exact layout.

Ten classes of drawn 32x32 images (a shape and a colour per class, placed
and sized at random, with noise; the same seed, the same pixels) in the zip
Kaggle delivers, which the converter reads like the real data. Tests build
their own inputs, good and broken, with `write_kaggle_zip`.
"""

import io
import os
import tempfile
import zipfile
from typing import Iterator, Mapping

import numpy as np
import py7zr
import tensorflow as tf

from cifar_tfrecord import records
from cifar_tfrecord import sources

SAMPLE_VERSION = 2


def draw_image(class_index: int, rng: np.random.Generator) -> np.ndarray:
    """One (32, 32, 3) uint8 image of a class: its shape on a random ground."""
    rows, columns = np.indices(records.IMAGE_SHAPE[:2], np.float32)
    center_row, center_column = rng.uniform(10, 22, size=2)
    radius = rng.uniform(5, 10)
    rows, columns = rows - center_row, columns - center_column
    mask = _SHAPES[class_index](rows, columns, radius)
    # A colour per class as well as a shape: a network from random weights
    # picks up colour within a few hundred steps, shape more slowly, so a
    # few minutes of training on a CPU show a model that has learned.
    foreground = np.clip(_COLOURS[class_index] + rng.normal(0, 25, size=3), 0, 255)
    # The ground stays far from the shape's colour so the shape is visible.
    background = (foreground + rng.uniform(90, 165, size=3)) % 255
    image = np.where(mask[..., None], foreground, background)
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


_COLOURS = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (250, 190, 212),
], np.float32)

_SHAPES = (
    lambda r, c, s: (np.abs(r) < s / 4) & (np.abs(c) < s * 1.4),        # airplane: wide bar
    lambda r, c, s: (np.abs(r) < s) & (np.abs(c) < s),                  # automobile: square
    lambda r, c, s: r ** 2 + c ** 2 < s ** 2,                           # bird: disc
    lambda r, c, s: np.abs(np.hypot(r, c) - s) < 1.5,                   # cat: ring
    lambda r, c, s: (np.abs(c) < s / 4) & (np.abs(r) < s * 1.4),        # deer: tall bar
    lambda r, c, s: ((np.abs(r) < 2) | (np.abs(c) < 2))
    & (np.abs(r) < s) & (np.abs(c) < s),                                # dog: plus
    lambda r, c, s: ((np.abs(r - c) < 2) | (np.abs(r + c) < 2))
    & (np.abs(r) < s) & (np.abs(c) < s),                                # frog: cross
    lambda r, c, s: (np.floor((r + 32) / 3) % 2 == 0),                  # horse: stripes
    lambda r, c, s: (r < s) & (np.abs(c) < (r + s) / 2),                # ship: triangle
    lambda r, c, s: (np.floor((r + 32) / 4) + np.floor((c + 32) / 4)) % 2 == 0,  # truck: checks
)


def encode_png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def generate(images_per_class: int, test_images: int,
             seed: int) -> tuple[dict[str, bytes], dict[str, str], dict[str, bytes]]:
    """The sample's train PNGs, their class names, and unlabelled test PNGs."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.repeat(np.arange(records.NUM_CLASSES), images_per_class))
    train, labels = {}, {}
    for number, class_index in enumerate(classes, start=1):
        train[str(number)] = encode_png(draw_image(class_index, rng))
        labels[str(number)] = records.CLASS_NAMES[class_index]
    test = {str(number): encode_png(draw_image(rng.integers(records.NUM_CLASSES), rng))
            for number in range(1, test_images + 1)}
    return train, labels, test


def write_kaggle_zip(zip_path: str, train: Mapping[str, bytes], labels_csv: str,
                     test: Mapping[str, bytes] | None = None) -> str:
    """Writes a zip in Kaggle's cifar-10 layout, and returns its path. `train`
    and `test` (None: no test.7z) map an entry name ('train/1.png') or an id
    ('1') to the file's bytes; `labels_csv` is trainLabels.csv's text."""
    entries = {'train.7z': make_7z(train, 'train'), sources.LABELS_CSV: labels_csv.encode()}
    if test is not None:
        entries['test.7z'] = make_7z(test, 'test')
        rows = ''.join(f'{image_id},cat\n' for image_id in test)
        entries[sources.SAMPLE_SUBMISSION_CSV] = f'id,label\n{rows}'.encode()
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            # A fixed date: the same sample gives the same zip bytes.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return zip_path


def labels_csv(labels: Mapping[str, str]) -> str:
    return 'id,label\n' + ''.join(f'{image_id},{label}\n' for image_id, label in labels.items())


def make_7z(files: Mapping[str, bytes], folder: str) -> bytes:
    """A 7z archive in memory; names without a folder go under `folder/`."""
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, 'w') as archive:
        for name, data in files.items():
            arcname = name if '/' in name or name.startswith('..') else f'{folder}/{name}.png'
            archive.writestr(data, arcname)
    return buffer.getvalue()


class SampleSource:
    """The generated sample, read as Kaggle's zip; generated when first read."""
    sets = sources.KAGGLE_SETS

    def __init__(self, images_per_class: int, test_images: int, seed: int):
        self._parameters = dict(images_per_class=images_per_class,
                                test_images=test_images, seed=seed)
        self._layout = None

    def fingerprint(self) -> dict:
        return {'kind': 'sample', 'version': SAMPLE_VERSION, **self._parameters}

    def batches(self, kaggle_set: str, batch_size: int) -> Iterator[sources.SourceBatch]:
        if self._layout is None:
            self._folder = tempfile.TemporaryDirectory(prefix='cifar_sample_')
            train, labels, test = generate(**self._parameters)
            self._layout = sources.KaggleLayout(write_kaggle_zip(
                os.path.join(self._folder.name, sources.COMPETITION_ZIP), train,
                labels_csv(labels), test))
        return self._layout.batches(kaggle_set, batch_size)
