"""The record schema, the shard writer, the manifest and the readers.

This module is the only place that knows how a CIFAR-10 example is laid out in
a TFRecord. The schema below drives both the writer (`serialize_examples`) and
the parser (`parse_examples`), and the manifest is the only way readers find
shards: nothing globs a folder.

Layout of a records folder:
    manifest.json                       written last, names every shard
    train-00000-of-00064.tfrecord       ...
    validation-00000-of-00064.tfrecord  ...
    test-00000-of-00064.tfrecord        ... (when the source has a test set)
"""

import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from cifar_tfrecord import errors
from cifar_tfrecord import files
from cifar_tfrecord import json_fields
from cifar_tfrecord.errors import UserInputError
from cifar_tfrecord.json_fields import FieldError, shown

IMAGE_SHAPE = (32, 32, 3)
# CIFAR-10's own label order; Kaggle's CSV, tfds and the Keras loader agree.
CLASS_NAMES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer',
    'dog', 'frog', 'horse', 'ship', 'truck',
)
NUM_CLASSES = len(CLASS_NAMES)
SPLITS = ('train', 'validation', 'test')
ENCODINGS = ('raw', 'png')
UNKNOWN_LABEL = -1
SCHEMA_VERSION = 1
MANIFEST_NAME = 'manifest.json'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@dataclasses.dataclass(frozen=True)
class Field:
    """One feature of a record: its key in the tf.train.Example and its type."""
    key: str
    dtype: tf.dtypes.DType
    default: object = None  # None: the feature must be present.


@functools.cache
def schema(encoding: str) -> dict[str, Field]:
    """The fields of a record, by name, for one image encoding; with png the keys are the
    TF Model Garden classification decoder's (`image/encoded`, ...), so those records feed it."""
    if encoding not in ENCODINGS:
        raise UserInputError(f'unknown encoding {encoding!r}: use one of {", ".join(ENCODINGS)}')
    image_key = 'image/encoded' if encoding == 'png' else 'image/raw'
    return {
        'image': Field(image_key, tf.string),
        'format': Field('image/format', tf.string, default=encoding.encode()),
        'label': Field('image/class/label', tf.int64, default=UNKNOWN_LABEL),
        'id': Field('image/id', tf.string),
    }


def serialize_examples(encoding: str, example_ids: list[str], images: list[bytes],
                       labels: np.ndarray) -> list[bytes]:
    """Records as serialized tf.train.Examples, one per (id, image, label).

    `images` hold 3072 uint8 pixels each ('raw') or PNG bytes ('png'); a label
    of UNKNOWN_LABEL leaves the label feature out.
    """
    labelled, unlabelled = _Record(encoding, labelled=True), _Record(encoding, labelled=False)
    return [(unlabelled if label == UNKNOWN_LABEL else labelled).serialize(example_id, image, label)
            for example_id, image, label in zip(example_ids, images, labels.tolist())]


class _Record:
    """One tf.train.Example with the schema's features, refilled per record: cheaper than
    building one per record, which matters at 60,000 records."""

    def __init__(self, encoding: str, labelled: bool):
        self._example = tf.train.Example()
        self._values = {}
        for name, field in schema(encoding).items():
            if name == 'label' and not labelled:
                continue  # An unlabelled image has no label feature at all.
            feature = self._example.features.feature[field.key]
            is_bytes = field.dtype == tf.string
            values = (feature.bytes_list if is_bytes else feature.int64_list).value
            # Set per record, except 'format', which keeps its default.
            values.append(field.default if field.default is not None else (b'' if is_bytes else 0))
            self._values[name] = values

    def serialize(self, example_id: str, image: bytes, label: int) -> bytes:
        self._values['id'][0] = example_id.encode()
        self._values['image'][0] = image
        if 'label' in self._values:
            self._values['label'][0] = label
        # Map entries in a fixed order: the same input gives the same bytes.
        return self._example.SerializeToString(deterministic=True)


def feature_spec(encoding: str) -> dict[str, tf.io.FixedLenFeature]:
    """The parse spec of `tf.io.parse_example`, derived from the schema."""
    return {
        field.key: tf.io.FixedLenFeature([], field.dtype, default_value=field.default)
        for field in schema(encoding).values()
    }


def decode_png(png: tf.Tensor) -> tf.Tensor:
    """One PNG to a (32, 32, 3) uint8 image; grey and RGBA images become RGB."""
    image = tf.io.decode_png(png, channels=IMAGE_SHAPE[-1])
    return tf.ensure_shape(image, IMAGE_SHAPE)


def parse_examples(serialized: tf.Tensor, encoding: str) -> dict[str, tf.Tensor]:
    """A batch of serialized records to 'image' (uint8, [batch, 32, 32, 3]), 'label'
    (int64, [batch], UNKNOWN_LABEL where absent) and 'id' (string, [batch])."""
    fields = schema(encoding)
    parsed = tf.io.parse_example(serialized, feature_spec(encoding))
    image_bytes = parsed[fields['image'].key]
    if encoding == 'raw':
        images = tf.reshape(tf.io.decode_raw(image_bytes, tf.uint8), (-1, *IMAGE_SHAPE))
    else:
        images = tf.map_fn(decode_png, image_bytes,
                           fn_output_signature=tf.TensorSpec(IMAGE_SHAPE, tf.uint8))
    return {'image': images, 'label': parsed[fields['label'].key],
            'id': parsed[fields['id'].key]}


# ----------------------------------------------------------------------------
# Manifest.


@dataclasses.dataclass(frozen=True)
class Shard:
    name: str
    num_examples: int
    num_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Split:
    num_examples: int
    # Examples per class name; unlabelled images count under 'unknown'.
    class_counts: dict[str, int]
    shards: tuple[Shard, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a records folder holds. Written last, so its presence means done."""
    encoding: str
    splits: dict[str, Split]
    # Where the records came from and the flags that shaped them; a rerun with
    # the same of both is a no-op.
    provenance: dict
    class_names: tuple[str, ...] = CLASS_NAMES
    image_shape: tuple[int, ...] = IMAGE_SHAPE
    schema_version: int = SCHEMA_VERSION

    def fingerprint(self) -> str:
        """The sha256 of what the records hold (schema, encoding, class names, every shard's
        name, count and sha256), not of where they came from (`provenance`): the same records
        elsewhere have the same fingerprint, records that differ in any byte another."""
        content = dataclasses.asdict(self)
        del content['provenance']
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# As json_fields reads them, an unknown key is refused, not ignored: a change
# to the format raises SCHEMA_VERSION.
_SHA256 = re.compile('[0-9a-f]{64}')


def parse_manifest(data) -> Manifest:
    """A manifest from its JSON value, every key and value checked, with no shard read
    (`check_shards` reads those); raises json_fields.FieldError naming the key at fault.

    The schema version comes first, so another version's manifest is told to convert again
    rather than refused for its keys.
    """
    if isinstance(data, dict) and data.get('schema_version', SCHEMA_VERSION) != SCHEMA_VERSION:
        raise FieldError(f'schema_version is {shown(data["schema_version"])}, this code reads '
                         f'version {SCHEMA_VERSION}: convert the data again')
    manifest = json_fields.parse(data, Manifest)
    if manifest.encoding not in ENCODINGS:
        raise FieldError(f'encoding is {shown(manifest.encoding)}, not one of '
                         f'{", ".join(ENCODINGS)}')
    if len(manifest.class_names) != NUM_CLASSES or not all(manifest.class_names):
        raise FieldError(f'class_names must be a list of {NUM_CLASSES} names, '
                         f'not {shown(data["class_names"])}')
    if manifest.image_shape != IMAGE_SHAPE:
        raise FieldError(f'image_shape is {shown(data["image_shape"])}, this code reads '
                         f'{list(IMAGE_SHAPE)}')
    for name, split in manifest.splits.items():
        _check_split(name, split)
    return manifest


def _check_split(name: str, split: Split) -> None:
    where = f'splits.{name}'
    if name not in SPLITS:
        raise FieldError(f'{where}: unknown split {name!r}, not one of {", ".join(SPLITS)}')
    counts = {f'{where}.num_examples': split.num_examples,
              **{f'{where}.class_counts.{class_name_}': count
                 for class_name_, count in split.class_counts.items()}}
    for index, shard in enumerate(split.shards):
        shard_where = f'{where}.shards[{index}]'
        if not (is_shard_file(shard.name) and shard.name.startswith(f'{name}-')
                and not shard.name.endswith(files.PARTIAL)):
            raise FieldError(f'{shard_where}.name is {shown(shard.name)}, not the name of a '
                             f'{name} shard (like {shard_name(name, 0, 1)})')
        if not _SHA256.fullmatch(shard.sha256):
            raise FieldError(f'{shard_where}.sha256 is {shown(shard.sha256)}, not 64 hex digits')
        counts.update({f'{shard_where}.num_examples': shard.num_examples,
                       f'{shard_where}.num_bytes': shard.num_bytes})
    for key, count in counts.items():
        if count < 0:
            raise FieldError(f'{key} must be at least 0, not {count}')
    in_shards = sum(shard.num_examples for shard in split.shards)
    if in_shards != split.num_examples:
        raise FieldError(f'{where}.num_examples is {split.num_examples}, but the num_examples '
                         f'of its shards add up to {in_shards}')
    if sum(split.class_counts.values()) != split.num_examples:
        raise FieldError(f'{where}.class_counts add up to {sum(split.class_counts.values())}, '
                         f'not its num_examples {split.num_examples}')


def manifest_path(records_dir: str) -> str:
    return os.path.join(records_dir, MANIFEST_NAME)


def load_manifest(records_dir: str) -> Manifest:
    """Reads `manifest.json`, checked by `parse_manifest`; any fault is a UserInputError."""
    path = manifest_path(records_dir)
    if not files.exists(path):
        raise UserInputError(
            f'{path} not found: {records_dir} holds no finished records '
            '(run scripts/convert.py first)')
    try:
        return parse_manifest(files.read_json(path))
    except FieldError as error:
        raise UserInputError(f'{path}: {error}') from None


def write_manifest(records_dir: str, manifest: Manifest) -> None:
    """Writes the manifest whole, or not at all."""
    files.write_atomically(manifest_path(records_dir), json_fields.to_json(manifest),
                           fault_point='manifest_written')


def shard_name(split: str, index: int, count: int) -> str:
    return f'{split}-{index:05d}-of-{count:05d}.tfrecord'


def is_shard_file(name: str) -> bool:
    """Whether a file name is a shard's, or a shard's temporary name."""
    return re.fullmatch(
        rf'({"|".join(SPLITS)})-\d{{5}}-of-\d{{5}}\.tfrecord({re.escape(files.PARTIAL)})?',
        name) is not None


def shard_paths(records_dir: str, split: str, manifest: Manifest) -> list[str]:
    """The shard files of one split, in manifest order."""
    if split not in manifest.splits:
        raise UserInputError(
            f'split {split!r} is not in {manifest_path(records_dir)}; it has: '
            f'{", ".join(manifest.splits) or "no splits"}')
    return [os.path.join(records_dir, shard.name) for shard in manifest.splits[split].shards]


# How much of a records folder `check_shards` reads, each level adding to the one before.
PRESENT = 0        # every shard there with its manifest size: a stat each
FIRST_RECORD = 1   # each split's first record parses in the manifest's encoding
CHECKSUM = 2       # every shard's sha256: every byte read
EVERY_RECORD = 3   # every record parses, and the counts are the manifest's


def check_shards(records_dir: str, manifest: Manifest, level: int,
                 splits: Iterable[str] | None = None) -> dict[str, int]:
    """Checks the shards of `splits` (default: all) against the manifest, raising a
    UserInputError naming the first that does not match; returns each split's record
    count, counted at EVERY_RECORD, else as the manifest says.

    PRESENT and FIRST_RECORD are cheap enough to check before anything is written, so a
    damaged folder stops a command before it starts, not when a split is first read.
    """
    where = manifest_path(records_dir)
    counts = {}
    for split in dict.fromkeys(splits or manifest.splits):
        paths = shard_paths(records_dir, split, manifest)
        shards = manifest.splits[split].shards
        labels = [_check_shard(path, shard, level, manifest.encoding, where)
                  for path, shard in zip(paths, shards)]
        first = next((path for path, shard in zip(paths, shards) if shard.num_examples), None)
        if FIRST_RECORD <= level < EVERY_RECORD and first:
            _check_records(first, manifest.encoding, where, limit=1)
        counts[split] = manifest.splits[split].num_examples
        if level >= EVERY_RECORD:
            counts[split] = _check_class_counts(split, np.concatenate(labels), manifest, where)
    return counts


def _check_shard(path: str, shard: Shard, level: int, encoding: str,
                 manifest: str) -> np.ndarray:
    """One shard checked to `level`; the labels of its records at EVERY_RECORD."""
    if not files.exists(path):
        raise UserInputError(f'shard {path} is listed in {manifest} but missing')
    size = files.size(path)
    if size != shard.num_bytes:
        raise UserInputError(f'shard {path} has the wrong size ({size} bytes, {manifest} says '
                             f'{shard.num_bytes}): corrupt or changed')
    if level >= CHECKSUM and file_digest(path)[0] != shard.sha256:
        raise UserInputError(f'shard {path} does not match its sha256 in {manifest} '
                             '(corrupt or changed)')
    if level < EVERY_RECORD:
        return np.zeros([0], np.int64)
    labels = _check_records(path, encoding, manifest)
    if len(labels) != shard.num_examples:
        raise UserInputError(
            f'shard {path} holds {len(labels)} records, {manifest} says {shard.num_examples}')
    return labels


def _check_records(path: str, encoding: str, manifest: str,
                   limit: int | None = None) -> np.ndarray:
    """The labels of a shard's records (its first `limit`), each parsed in `encoding`.

    A hand-edited encoding would otherwise fail in the middle of training.
    """
    try:
        return np.concatenate([batch['label'] for batch in _read_batches(
            [path], encoding, limit or 4096, limit)] or [[]])
    except tf.errors.OpError as error:
        raise UserInputError(f'shard {path} does not hold {encoding} records, as {manifest} '
                             f'says ({errors.first_line(error.message)})') from None


def _check_class_counts(split: str, labels: np.ndarray, manifest: Manifest,
                        where: str) -> int:
    found = dict.fromkeys(manifest.splits[split].class_counts, 0)
    for label in labels.tolist():
        found[class_name(label)] = found.get(class_name(label), 0) + 1
    if found != manifest.splits[split].class_counts:
        raise UserInputError(f'the {split} shards hold the class counts {found}, {where} says '
                             f'{manifest.splits[split].class_counts}')
    return len(labels)


# ----------------------------------------------------------------------------
# Writing.


def write_partial_shard(path: str, serialized: list[bytes]) -> None:
    """Writes a shard under its temporary name, which `publish` renames once the whole
    conversion has succeeded: a reader never sees a partial shard under its final name."""
    with tf.io.TFRecordWriter(files.partial_name(path)) as writer:
        for record in serialized:
            writer.write(record)


def describe_partial_shard(path: str, num_examples: int) -> Shard:
    """The manifest entry of a shard written by `write_partial_shard`."""
    digest, num_bytes = file_digest(files.partial_name(path))
    return Shard(os.path.basename(path), num_examples, num_bytes, digest)


def publish(path: str) -> None:
    """Moves a file written under its temporary name to `path`."""
    files.rename(files.partial_name(path), path)


def file_digest(path: str) -> tuple[str, int]:
    """The sha256 and size of a file."""
    digest = hashlib.sha256()
    num_bytes = 0
    with files.open_file(path) as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)  # Hashes without the interpreter lock.
            num_bytes += len(chunk)
    return digest.hexdigest(), num_bytes


# ----------------------------------------------------------------------------
# Reading and verifying.


def read_split(records_dir: str, split: str,
               batch_size: int = 1024) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yields `(kaggle_id, image, label)` for every record of a split, in manifest order:
    `image` a (32, 32, 3) uint8 array, `label` an int, -1 when the image is unlabelled."""
    manifest = load_manifest(records_dir)
    paths = shard_paths(records_dir, split, manifest)
    for batch in _read_batches(paths, manifest.encoding, batch_size):
        for example_id, image, label in zip(batch['id'], batch['image'], batch['label']):
            yield example_id.decode(), image, int(label)


def _read_batches(paths: list[str], encoding: str, batch_size: int,
                  limit: int | None = None) -> Iterator[dict]:
    dataset = tf.data.TFRecordDataset(paths)
    dataset = dataset.take(limit) if limit else dataset
    dataset = dataset.batch(batch_size).map(lambda serialized: parse_examples(serialized, encoding))
    return dataset.as_numpy_iterator()


def verify(records_dir: str) -> dict[str, int]:
    """Re-reads every shard against the manifest; returns the verified records per split."""
    return check_shards(records_dir, load_manifest(records_dir), EVERY_RECORD)


def class_name(label: int) -> str:
    return CLASS_NAMES[label] if label != UNKNOWN_LABEL else 'unknown'
