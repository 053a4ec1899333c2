"""The converter: a source's images to stratified, shuffled TFRecord shards.

    source --batches of (id, png or pixels, label)--> decode and check
           (TF threads) --> ordered by id --> split train/validation per
           class --> shuffle --> shards, under temporary names --> renamed
           --> manifest.json

Ordering each set by id makes the shards a function of the images, their
labels and the flags alone, not of the order a source yields them in.
Shards keep their temporary names until every set has been read, decoded
and checked, and are removed on any error, so bad input leaves no partial
output. The manifest goes last.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import os
import struct
import zlib
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from cifar_tfrecord import faults
from cifar_tfrecord import records
from cifar_tfrecord.progress import Progress
from cifar_tfrecord import sample
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig
from cifar_tfrecord.errors import UserInputError

# Images per source batch, handed to TF at a time: large enough that TF's
# per-call cost vanishes, small enough that decoding overlaps reading.
_BATCH_SIZE = 1024
# tf.data spends more per call of a map function than decoding a 32x32 PNG
# takes: PNGs are decoded in groups, one call per group.
_DECODE_GROUP = 16
_GROUP_CALLS = 2
# The position of a copy that pads a batch to whole groups: not an image.
_PADDING = -1
# PNG chunks: length and type, then data, then a CRC-32 (RFC 2083).
_PNG_CHUNK_HEAD = struct.Struct('>I4s')
_PNG_CRC = struct.Struct('>I')
_PNG_CHUNK_OVERHEAD = _PNG_CHUNK_HEAD.size + _PNG_CRC.size
_PNG_SIZE = struct.Struct('>II')  # IHDR starts with width, height.
# A 32x32 PNG's first chunk up to its size: IHDR, of 13 bytes, width and
# height 32. A PNG that declares other dimensions is refused before
# TensorFlow decodes it, and allocates them: 16,384 x 16,384 pixels of one
# colour compress to under 1 MB.
_IHDR_32x32 = (_PNG_CHUNK_HEAD.pack(13, b'IHDR')
               + _PNG_SIZE.pack(records.IMAGE_SHAPE[1], records.IMAGE_SHAPE[0]))
_IHDR_START = len(records.PNG_SIGNATURE)
_IHDR_END = _IHDR_START + len(_IHDR_32x32)


@dataclasses.dataclass(frozen=True)
class LoadedSet:
    """One of Kaggle's sets, decoded, checked and serialized, in memory,
    ordered by id (`sources.id_sort_key`).
    """
    ids: list[str]
    labels: np.ndarray      # int64, (n,), UNKNOWN_LABEL where unlabelled
    records: list[bytes]    # serialized tf.train.Examples


def convert(config: ConvertConfig) -> records.Manifest:
    """Converts the configured source into `config.output_dir`.

    A rerun with the same input and flags returns the existing manifest at
    once; records made from other input or flags are replaced only with
    `overwrite`.
    """
    config.validate()
    source = make_source(config)
    provenance = {'source': source.fingerprint(), 'options': _options(config)}
    existing = _existing_manifest(config.output_dir)
    if existing is not None and not config.overwrite:
        if existing.provenance == provenance and _shards_present(config.output_dir, existing):
            _remove_unlisted_shards(config.output_dir, existing)
            logging.info('%s is up to date with this input and these flags; nothing to do '
                         '(--overwrite converts again)', config.output_dir)
            return existing
        raise UserInputError(
            f'{config.output_dir} already holds records made from other input or flags; '
            'pass --overwrite to replace them, or choose another --output_dir')
    with _StagedWriter(config) as writer:
        train = load_set(source.batches('train', _BATCH_SIZE), config.encoding, 'train')
        train_indices, validation_indices = split_train(
            train, config.validation_fraction, config.seed)
        writer.stage('train', train, train_indices)
        writer.stage('validation', train, validation_indices)
        if 'test' in source.sets():
            test = load_set(source.batches('test', _BATCH_SIZE), config.encoding, 'test')
            writer.stage('test', test, np.arange(len(test.ids)))
        return writer.commit(provenance, existing)


def make_source(config: ConvertConfig):
    """The source named by `--source`, with 'auto' resolved and logged."""
    name = config.source
    if name == 'auto':
        name = _resolve_auto(config)
    if name == 'dir':
        return sources.KaggleLayout(config.data_dir)
    if name == 'kaggle':
        return sources.KaggleLayout(sources.download_competition(config.download_dir))
    if name == 'tfds':
        return sources.TfdsSource(config.tfds_data_dir)
    return sample.SampleSource(
        config.sample_images_per_class, config.sample_test_images, config.seed)


def _resolve_auto(config: ConvertConfig) -> str:
    if config.data_dir:
        return 'dir'
    if os.path.exists(os.path.join(config.download_dir, sources.COMPETITION_ZIP)):
        return 'kaggle'
    if sources.kaggle_credentials_found():
        return 'kaggle'
    logging.warning(
        'No --data_dir, no %s in %s and no Kaggle credentials: converting the '
        'generated offline sample (--source=sample), not CIFAR-10. See the README '
        'for the real data.', sources.COMPETITION_ZIP, config.download_dir)
    return 'sample'


def _options(config: ConvertConfig) -> dict:
    return {'encoding': config.encoding, 'validation_fraction': config.validation_fraction,
            'seed': config.seed, 'num_shards': config.num_shards}


# ----------------------------------------------------------------------------
# Loading: decode and check every image, overlapped with reading.


def load_set(batches: Iterable[sources.SourceBatch], encoding: str,
             kaggle_set: str) -> LoadedSet:
    """Decodes or checks, then serializes, a set's images, in memory.

    A file that would fail in training fails here instead, with its name.
    With 'raw' every PNG is decoded. With 'png' the original bytes are kept,
    and each file's structure is checked instead (see `png_size`).
    """
    progress = Progress(kaggle_set)
    ids, labels, serialized = [], [], []
    for batch, images in _decoded(iter(batches), encoding, kaggle_set):
        if encoding == 'raw':
            images = [image.tobytes() for image in images]
        serialized += records.serialize_examples(encoding, batch.ids, images, batch.labels)
        ids += batch.ids
        labels.append(batch.labels)
        progress.update(len(batch.ids), batch.total)
    progress.done()
    if not ids:
        raise UserInputError(f'{kaggle_set}: the source holds no images')
    return _in_id_order(ids, np.concatenate(labels), serialized)


def _in_id_order(ids: list[str], labels: np.ndarray, serialized: list[bytes]) -> LoadedSet:
    """The set ordered by id, whatever order its source yielded it in (a 7z
    archive's entries, a file system's listing), so that splitting and
    shuffling, which work on positions, give the same shards from either.
    """
    sort_keys = [sources.id_sort_key(image_id) for image_id in ids]
    order = sorted(range(len(ids)), key=sort_keys.__getitem__)
    return LoadedSet([ids[index] for index in order], labels[order],
                     [serialized[index] for index in order])


def _decoded(batches: Iterator[sources.SourceBatch], encoding: str, kaggle_set: str
             ) -> Iterator[tuple[sources.SourceBatch, np.ndarray | list[bytes]]]:
    """Yields each batch with its (n, 32, 32, 3) uint8 pixels, or with
    'png', its checked PNGs, which are not decoded.
    """
    first = next(batches, None)
    if first is None:
        return
    batches = itertools.chain([first], batches)
    if isinstance(first.images, np.ndarray):  # Pixels already (tfds).
        for batch in batches:
            _check_sizes(batch.ids, np.array([batch.images.shape[1:3]] * len(batch.ids)),
                         kaggle_set)
            yield batch, batch.images if encoding == 'raw' else _encode_pngs(batch.images)
    elif encoding == 'png':
        for batch in batches:
            _check_png_structures(batch.ids, batch.images, kaggle_set)
            yield batch, batch.images
    else:
        yield from _decoded_pngs(batches, kaggle_set)


def _decoded_pngs(batches: Iterator[sources.SourceBatch], kaggle_set: str
                  ) -> Iterator[tuple[sources.SourceBatch, np.ndarray]]:
    """Decodes PNG bytes in one long tf.data pipeline, in parallel C++ threads.

    The source is read (files, or archives) inside the pipeline's generator
    while earlier batches decode, and the caller serializes what comes out:
    reading, decoding and serializing overlap on two cores.

    Each PNG travels with its position in the set (copies that pad a batch
    to whole groups with `_PADDING`), and the source's batches are rebuilt
    from those positions: whatever sizes the source's batches have, every
    image stays with its own id and label.
    """
    pending = collections.deque()  # Batches handed to TF, not yet decoded.
    source_errors = []

    def png_batches():
        start = 0
        try:
            for batch in batches:
                _check_signatures(batch.ids, batch.images, kaggle_set)
                pending.append(batch)
                yield _in_groups(batch.images), _positions(start, len(batch.ids))
                start += len(batch.ids)
        except Exception as error:  # Raised again below, as itself.
            source_errors.append(error)

    group_shape = [None, _DECODE_GROUP]
    dataset = (
        tf.data.Dataset.from_generator(png_batches, output_signature=(
            tf.TensorSpec(group_shape, tf.string), tf.TensorSpec(group_shape, tf.int64)))
        # The generator runs batches ahead, so decoding never waits on reading.
        .prefetch(4)
        .unbatch()  # To groups: no step of the pipeline works image by image.
        .map(_decode_group, num_parallel_calls=_GROUP_CALLS, deterministic=True)
        # Few calls out of TF; the source's batches are rebuilt below.
        .batch(max(_BATCH_SIZE // _DECODE_GROUP, 1))
        .prefetch(1))
    try:
        yield from _rebuilt_batches(dataset.as_numpy_iterator(), pending)
    except tf.errors.InvalidArgumentError:
        if source_errors:
            raise source_errors[0] from None
        # Some image in a pending batch is broken; find which, and how.
        raise _explain_bad_png(pending, kaggle_set) from None
    if source_errors:
        raise source_errors[0]


def _rebuilt_batches(decoded: Iterable[tuple[np.ndarray, np.ndarray]],
                     pending: collections.deque
                     ) -> Iterator[tuple[sources.SourceBatch, np.ndarray]]:
    """The source's batches, each with its images, from decoded `(images,
    positions)` chunks; `pending` holds the batches not yet rebuilt, oldest
    first.

    Raises:
        RuntimeError: an image arrived out of its place (a bug, not bad input).
    """
    next_position = 0
    images = np.empty((0, *records.IMAGE_SHAPE), np.uint8)  # Not yet in a batch.
    for chunk, positions in decoded:
        chunk, positions = chunk.reshape(-1, *records.IMAGE_SHAPE), positions.reshape(-1)
        is_image = positions != _PADDING
        if not is_image.all():
            chunk, positions = chunk[is_image], positions[is_image]
        if not np.array_equal(positions, np.arange(next_position, next_position + len(positions))):
            raise RuntimeError(f'internal error: decoded images out of place after image '
                               f'{next_position} (positions {positions[:5]}...)')
        next_position += len(positions)
        images = np.concatenate([images, chunk]) if len(images) else chunk
        while pending and len(pending[0].ids) <= len(images):
            batch = pending.popleft()
            yield batch, images[:len(batch.ids)]
            images = images[len(batch.ids):]
    if pending or len(images):
        raise RuntimeError(f'internal error: {len(pending)} batches and {len(images)} '
                           'decoded images left over')


def _decode_group(pngs: tf.Tensor, positions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # One op per image in the graph, run in parallel by TF.
    images = [records.decode_png(png) for png in tf.unstack(pngs, num=_DECODE_GROUP)]
    return tf.stack(images), positions


def _in_groups(pngs: list[bytes]) -> np.ndarray:
    """A batch's PNGs as rows of a decoding group each, the last row padded
    with copies of the last PNG.
    """
    padded = pngs + pngs[-1:] * (_padded_size(len(pngs)) - len(pngs))
    return np.array(padded, object).reshape(-1, _DECODE_GROUP)


def _positions(start: int, count: int) -> np.ndarray:
    """The positions in the set of a batch's images, in rows as `_in_groups`
    puts them.
    """
    positions = np.full(_padded_size(count), _PADDING, np.int64)
    positions[:count] = np.arange(start, start + count)
    return positions.reshape(-1, _DECODE_GROUP)


def _padded_size(count: int) -> int:
    return -(-count // _DECODE_GROUP) * _DECODE_GROUP


def _check_signatures(ids: list[str], pngs: list[bytes], kaggle_set: str) -> None:
    """Refuses a file that is not a PNG, or whose header is not a 32x32
    image's, before anything is decoded."""
    for image_id, png in zip(ids, pngs):
        _check_signature(image_id, png, kaggle_set)
        if png[_IHDR_START:_IHDR_END] != _IHDR_32x32:
            _refuse_header(image_id, png, kaggle_set)


def _refuse_header(image_id: str, png: bytes, kaggle_set: str) -> None:
    if len(png) < _IHDR_END or png[_IHDR_START + 4:_IHDR_START + 8] != b'IHDR':
        raise UserInputError(
            f'{kaggle_set}: image {image_id}.png is a broken PNG (no IHDR chunk first)')
    width, height = _PNG_SIZE.unpack_from(png, _IHDR_START + _PNG_CHUNK_HEAD.size)
    if (height, width) != records.IMAGE_SHAPE[:2]:
        _check_sizes([image_id], np.array([(height, width)]), kaggle_set)
    raise UserInputError(
        f'{kaggle_set}: image {image_id}.png is a broken PNG (an IHDR chunk of '
        f'{_PNG_CHUNK_HEAD.unpack_from(png, _IHDR_START)[0]} bytes, not 13)')


def _check_signature(image_id: str, png: bytes, kaggle_set: str) -> None:
    if not png.startswith(records.PNG_SIGNATURE):
        raise UserInputError(f'{kaggle_set}: image {image_id}.png is not a PNG file')


def _check_png_structures(ids: list[str], pngs: list[bytes], kaggle_set: str) -> None:
    for image_id, png in zip(ids, pngs):
        _check_signature(image_id, png, kaggle_set)
        try:
            size = png_size(png)
        except ValueError as error:
            raise UserInputError(
                f'{kaggle_set}: image {image_id}.png is a broken PNG ({error})') from None
        if size != records.IMAGE_SHAPE[:2]:
            _check_sizes([image_id], np.array([size]), kaggle_set)


def png_size(png: bytes) -> tuple[int, int]:
    """The (height, width) of a whole PNG file, found without decoding it.

    Checks that the file is a sequence of chunks, from IHDR to IEND, each
    with a correct CRC-32: a truncated file or any changed byte fails. It
    reads no pixels, so it costs a small part of what decoding (or PIL's
    verify(), which also inflates nothing but is far slower) would, and
    `--encoding=png` is not held to the speed of 'raw'.

    Raises:
        ValueError: saying what is wrong.
    """
    signature_size = len(records.PNG_SIGNATURE)
    end_of_file = len(png)
    position = signature_size
    kind = None
    has_image_data = False
    while kind != b'IEND':
        if position + _PNG_CHUNK_OVERHEAD > end_of_file:
            raise ValueError('the file ends before its IEND chunk')
        length, kind = _PNG_CHUNK_HEAD.unpack_from(png, position)
        crc_position = position + _PNG_CHUNK_HEAD.size + length
        if crc_position + _PNG_CRC.size > end_of_file:
            raise ValueError(f'{kind!r} chunk runs past the end of the file')
        # The CRC covers the chunk's type and data, not its length.
        (crc,) = _PNG_CRC.unpack_from(png, crc_position)
        if zlib.crc32(png[position + 4:crc_position]) != crc:
            raise ValueError(f'{kind!r} chunk fails its CRC check')
        has_image_data = has_image_data or kind == b'IDAT'
        position = crc_position + _PNG_CRC.size
    if png[signature_size + 4:signature_size + 8] != b'IHDR' or not has_image_data:
        raise ValueError('no IHDR chunk first, or no IDAT chunk')
    width, height = _PNG_SIZE.unpack_from(png, signature_size + _PNG_CHUNK_HEAD.size)
    return height, width


def _explain_bad_png(batches: Iterable[sources.SourceBatch],
                     kaggle_set: str) -> UserInputError:
    for batch in batches:
        for image_id, image in zip(batch.ids, batch.images):
            _check_signature(image_id, image, kaggle_set)
            try:
                decoded = tf.io.decode_png(image, channels=records.IMAGE_SHAPE[-1])
            except tf.errors.InvalidArgumentError as error:
                reason = error.message.split('[Op')[0].strip().splitlines()[-1]
                return UserInputError(
                    f'{kaggle_set}: image {image_id}.png does not decode ({reason})')
            _check_sizes([image_id], np.array([decoded.shape[:2]]), kaggle_set)
    return UserInputError(f'{kaggle_set}: a PNG does not decode')


def _check_sizes(ids: list[str], sizes: np.ndarray, kaggle_set: str) -> None:
    """Refuses any image whose (height, width) is not 32x32."""
    wrong = np.flatnonzero(np.any(sizes != records.IMAGE_SHAPE[:2], axis=1))
    if len(wrong):
        height, width = sizes[wrong[0]]
        raise UserInputError(
            f'{kaggle_set}: image {ids[wrong[0]]} is {width}x{height} pixels, not '
            f'{records.IMAGE_SHAPE[1]}x{records.IMAGE_SHAPE[0]}')


def _encode_pngs(images: np.ndarray) -> list[bytes]:
    dataset = tf.data.Dataset.from_tensor_slices(images).map(
        tf.io.encode_png, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return list(dataset.as_numpy_iterator())


# ----------------------------------------------------------------------------
# Splitting.


def split_train(train: LoadedSet, validation_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle's train set to (train, validation) indices, stratified per class.

    Indices are positions in `train`, which is in id order (see LoadedSet),
    so the split does not depend on the order of the source.
    """
    if np.any(train.labels == records.UNKNOWN_LABEL):
        raise UserInputError('train: every training image needs a label')
    rng = np.random.default_rng(seed)
    validation = []
    for class_index in range(records.NUM_CLASSES):
        members = np.flatnonzero(train.labels == class_index)
        count = round(len(members) * validation_fraction)
        if len(members) >= 2:
            # Even tiny data validates and trains on every class.
            count = min(max(count, 1), len(members) - 1)
        validation.append(rng.permutation(members)[:count])
    validation = np.sort(np.concatenate(validation))
    if len(validation) == 0 or len(validation) == len(train.ids):
        raise UserInputError(
            f'--validation_fraction={validation_fraction} leaves an empty split of '
            f'{len(train.ids)} training images')
    return np.setdiff1d(np.arange(len(train.ids)), validation), validation


# ----------------------------------------------------------------------------
# Writing.


class _StagedWriter:
    """Writes shards under temporary names, and publishes them all, then the
    manifest, only when every set was read.

    On any error the temporary files are removed and nothing else is touched.
    """

    def __init__(self, config: ConvertConfig):
        self._config = config
        self._created_dir = not tf.io.gfile.exists(config.output_dir)
        # Shards are written on the caller's thread, and hashed on this one,
        # which holds the interpreter lock a few times per shard. Writing
        # there too would take it once per record, and the two threads would
        # spend their time waiting on each other for it.
        self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._staged = {}

    def __enter__(self) -> '_StagedWriter':
        tf.io.gfile.makedirs(self._config.output_dir)
        return self

    def stage(self, split: str, loaded: LoadedSet, indices: np.ndarray) -> None:
        """Shuffles a split across its shards and writes them."""
        # Each split has its own stream, so the order of writing does not matter.
        rng = np.random.default_rng([self._config.seed, records.SPLITS.index(split)])
        shuffled = rng.permutation(indices)
        count = min(self._config.num_shards, len(shuffled))
        shards = []
        for index, members in enumerate(np.array_split(shuffled, count)):
            path = os.path.join(self._config.output_dir, records.shard_name(split, index, count))
            records.write_partial_shard(path, [loaded.records[member] for member in members])
            faults.reached('shard_written')
            shards.append(self._hasher.submit(records.describe_partial_shard, path, len(members)))
        logging.info('%s: wrote %d images in %d shards', split, len(shuffled), count)
        class_counts = collections.Counter(
            records.class_name(int(label)) for label in loaded.labels[indices])
        self._staged[split] = (len(shuffled), dict(sorted(class_counts.items())), shards)

    def commit(self, provenance: dict, existing: records.Manifest | None) -> records.Manifest:
        splits = {split: records.Split(count, class_counts,
                                       tuple(future.result() for future in futures))
                  for split, (count, class_counts, futures) in self._staged.items()}
        output_dir = self._config.output_dir
        if existing is not None:
            # Gone first: while old and new shards mix, no manifest vouches for them.
            tf.io.gfile.remove(records.manifest_path(output_dir))
        for split in splits.values():
            for shard in split.shards:
                records.publish(os.path.join(output_dir, shard.name))
                faults.reached('shard_published')
        manifest = records.Manifest(self._config.encoding, splits, provenance)
        records.write_manifest(output_dir, manifest)
        faults.reached('manifest_published')
        _remove_unlisted_shards(output_dir, manifest)
        logging.info('Wrote %s: %s', records.manifest_path(output_dir), ', '.join(
            f'{name} {split.num_examples}' for name, split in splits.items()))
        return manifest

    def __exit__(self, error_type, error, traceback) -> None:
        self._hasher.shutdown(wait=True, cancel_futures=True)
        if error_type is None:
            return
        output_dir = self._config.output_dir
        for name in tf.io.gfile.listdir(output_dir):
            if name.endswith(records.PARTIAL_SUFFIX):
                tf.io.gfile.remove(os.path.join(output_dir, name))
        if self._created_dir and not tf.io.gfile.listdir(output_dir):
            tf.io.gfile.rmtree(output_dir)


def _existing_manifest(output_dir: str) -> records.Manifest | None:
    if not tf.io.gfile.exists(records.manifest_path(output_dir)):
        return None
    try:
        return records.load_manifest(output_dir)
    except UserInputError:
        # An unreadable manifest: treat the folder like any records from
        # other flags; nothing is touched without --overwrite.
        return records.Manifest('unknown', {}, {'unreadable': True})


def _shards_present(output_dir: str, manifest: records.Manifest) -> bool:
    for split in manifest.splits.values():
        for shard in split.shards:
            path = os.path.join(output_dir, shard.name)
            if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length != shard.num_bytes:
                return False
    return True


def _remove_unlisted_shards(output_dir: str, manifest: records.Manifest) -> None:
    """Removes shard files the manifest does not list.

    They are left by an earlier conversion with other flags, or by a killed
    one (temporary files): no reader would take them for data, but they
    would mislead a person, and fill the disk.
    """
    listed = {shard.name for split in manifest.splits.values() for shard in split.shards}
    for name in tf.io.gfile.listdir(output_dir):
        if records.is_shard_file(name) and name not in listed:
            tf.io.gfile.remove(os.path.join(output_dir, name))
