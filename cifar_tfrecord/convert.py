"""The converter: a source's images to stratified, shuffled TFRecord shards.

    source --batches--> decode and check (TF threads) --> ordered by id -->
    split train/validation per class --> shuffle --> shards, under temporary
    names --> renamed --> manifest.json

Ordering each set by id makes the shards a function of the images, their
labels and the flags alone, not of the order a source yields them in. Bad
input leaves no partial output: shards keep their temporary names until
every set has been read and checked, and are removed on any error.
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
from cifar_tfrecord import files
from cifar_tfrecord import records
from cifar_tfrecord.progress import Progress
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
# PNG chunks: length and type, then data, then a CRC-32 (RFC 2083).
_CHUNK_HEAD = struct.Struct('>I4s')
_CRC = struct.Struct('>I')
_IHDR_HEAD = struct.Struct('>I4sII')  # The first chunk's length and type, width and height.
# A 32x32 PNG's first bytes. A PNG that declares other dimensions is refused
# before TensorFlow decodes it, and allocates them: 16,384 x 16,384 pixels of
# one colour compress to under 1 MB.
_HEAD_32x32 = records.PNG_SIGNATURE + _IHDR_HEAD.pack(
    13, b'IHDR', records.IMAGE_SHAPE[1], records.IMAGE_SHAPE[0])


@dataclasses.dataclass(frozen=True)
class LoadedSet:
    """One of Kaggle's sets, checked and serialized, in memory, in id order."""
    ids: list[str]
    labels: np.ndarray      # int64, (n,), UNKNOWN_LABEL where unlabelled
    records: list[bytes]    # serialized tf.train.Examples


def convert(config: ConvertConfig, source=None) -> records.Manifest:
    """Converts the configured source (`source`, when made already: see
    sources.make_source) into `config.output_dir`. A rerun with the same
    input and flags returns the existing manifest at once; records made from
    other input or flags are replaced only with `overwrite`."""
    config.validate()
    source = source or sources.make_source(config)
    output_dir = config.output_dir
    provenance = {'source': source.fingerprint(), 'options': {
        'encoding': config.encoding, 'validation_fraction': config.validation_fraction,
        'seed': config.seed, 'num_shards': config.num_shards}}
    existing = _existing_manifest(output_dir)
    if existing is not None and not config.overwrite:
        if existing.provenance == provenance and _shards_present(output_dir, existing):
            _remove_unlisted_shards(output_dir, existing)
            logging.info('%s is up to date with this input and these flags; nothing to do '
                         '(--overwrite converts again)', output_dir)
            return existing
        raise UserInputError(
            f'{output_dir} already holds records made from other input or flags; '
            'pass --overwrite to replace them, or choose another --output_dir')
    created_dir = not files.exists(output_dir)
    files.makedirs(output_dir)
    # Shards are written on this thread, and hashed on the hasher's, which
    # takes the interpreter lock a few times per shard. Writing there too
    # would take it once per record, and the two would wait on each other.
    hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        train = load_set(source.batches('train', _BATCH_SIZE), config.encoding, 'train')
        halves = split_train(train, config.validation_fraction, config.seed)
        staged = {split: _write_split(config, split, train, indices, hasher)
                  for split, indices in zip(('train', 'validation'), halves)}
        if 'test' in source.sets:
            test = load_set(source.batches('test', _BATCH_SIZE), config.encoding, 'test')
            staged['test'] = _write_split(config, 'test', test, np.arange(len(test.ids)), hasher)
        splits = {split: records.Split(count, counts, tuple(shard.result() for shard in shards))
                  for split, (count, counts, shards) in staged.items()}
        return _publish(output_dir, records.Manifest(config.encoding, splits, provenance),
                        existing)
    except BaseException:
        hasher.shutdown(cancel_futures=True)  # No hashing of the files removed next.
        files.remove_partial_files(output_dir)
        if created_dir and not files.listdir(output_dir):
            files.remove(output_dir)
        raise
    finally:
        hasher.shutdown()


def load_set(batches: Iterable[sources.SourceBatch], encoding: str,
             kaggle_set: str) -> LoadedSet:
    """Decodes (raw) or checks (png, see `png_size`), then serializes, a
    set's images, in memory: a file that would fail in training fails here
    instead, with its name."""
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
    # In id order, whatever order the source yielded (a 7z archive's entries,
    # a file system's listing): splitting and shuffling work on positions.
    sort_keys = [sources.id_sort_key(image_id) for image_id in ids]
    order = sorted(range(len(ids)), key=sort_keys.__getitem__)
    return LoadedSet([ids[index] for index in order], np.concatenate(labels)[order],
                     [serialized[index] for index in order])


def _decoded(batches: Iterator[sources.SourceBatch], encoding: str, kaggle_set: str
             ) -> Iterator[tuple[sources.SourceBatch, np.ndarray | list[bytes]]]:
    """Yields each batch with its (n, 32, 32, 3) uint8 pixels, or its PNGs."""
    first = next(batches, None)
    if first is None:
        return
    batches = itertools.chain([first], batches)
    if isinstance(first.images, np.ndarray):  # Pixels already (tfds).
        for batch in batches:
            _check_size(batch.ids[0], *batch.images.shape[1:3], kaggle_set)
            if encoding == 'raw':
                yield batch, batch.images
            else:
                yield batch, list(tf.data.Dataset.from_tensor_slices(batch.images).map(
                    tf.io.encode_png, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True).as_numpy_iterator())
    elif encoding == 'png':
        for batch in batches:
            _check_pngs(batch.ids, batch.images, kaggle_set, whole=True)
            yield batch, batch.images
    else:
        yield from _decoded_pngs(batches, kaggle_set)


def _decoded_pngs(batches: Iterator[sources.SourceBatch], kaggle_set: str
                  ) -> Iterator[tuple[sources.SourceBatch, np.ndarray]]:
    """Decodes PNGs in one long tf.data pipeline, in parallel C++ threads, while its
    generator reads the source, so reading, decoding and serializing overlap. Each chunk
    of _BATCH_SIZE images, the last padded to whole groups, comes out of TF whole, in order."""
    pending = collections.deque()  # Chunks handed to TF, not yet decoded.
    source_errors = []

    def png_chunks():
        try:
            images = _checked_images(batches, kaggle_set)
            while chunk := list(itertools.islice(images, _BATCH_SIZE)):
                ids, pngs, labels, totals = zip(*chunk)
                pending.append(sources.SourceBatch(list(ids), pngs, np.array(labels, np.int64),
                                                   totals[-1]))
                padded = pngs + pngs[-1:] * (-len(pngs) % _DECODE_GROUP)
                yield np.array(padded, object).reshape(-1, _DECODE_GROUP)
        except Exception as error:  # Raised again below, as itself.
            source_errors.append(error)

    dataset = (
        tf.data.Dataset.from_generator(png_chunks, output_signature=tf.TensorSpec(
            [None, _DECODE_GROUP], tf.string))
        # The generator runs chunks ahead, so decoding never waits on reading.
        .prefetch(4)
        .unbatch()  # To groups: no step of the pipeline works image by image.
        .map(_decode_group, num_parallel_calls=_GROUP_CALLS, deterministic=True)
        .batch(-(-_BATCH_SIZE // _DECODE_GROUP))  # A chunk's groups.
        .prefetch(1))
    try:
        for images in dataset.as_numpy_iterator():
            chunk = pending.popleft()
            yield chunk, images.reshape(-1, *records.IMAGE_SHAPE)[:len(chunk.ids)]
    except tf.errors.InvalidArgumentError:
        if not source_errors:
            # Some image in a pending chunk is broken; find which, and how.
            raise _explain_bad_png(pending, kaggle_set) from None
    if source_errors:
        raise source_errors[0]


def _checked_images(batches: Iterator[sources.SourceBatch], kaggle_set: str) -> Iterator[tuple]:
    """`(id, png, label, total)` of every image, each batch's PNGs checked first."""
    for batch in batches:
        _check_pngs(batch.ids, batch.images, kaggle_set, whole=False)
        yield from zip(batch.ids, batch.images, batch.labels.tolist(),
                       itertools.repeat(batch.total))


def _decode_group(pngs: tf.Tensor) -> tf.Tensor:
    # One op per image in the graph, run in parallel by TF.
    return tf.stack([records.decode_png(png) for png in tf.unstack(pngs, num=_DECODE_GROUP)])


def _check_pngs(ids: list[str], pngs: list[bytes], kaggle_set: str, whole: bool) -> None:
    """Refuses a file that is not a 32x32 PNG, before anything decodes it: on
    its header alone, or, with `whole` or a header that is not a 32x32 PNG's,
    on every chunk (`png_size`)."""
    for image_id, png in zip(ids, pngs):
        if whole or not png.startswith(_HEAD_32x32):
            if not png.startswith(records.PNG_SIGNATURE):
                raise UserInputError(f'{kaggle_set}: image {image_id}.png is not a PNG file')
            try:
                height, width = png_size(png)
            except ValueError as error:
                raise UserInputError(
                    f'{kaggle_set}: image {image_id}.png is a broken PNG ({error})') from None
            _check_size(image_id, height, width, kaggle_set)


def png_size(png: bytes) -> tuple[int, int]:
    """The (height, width) of a whole PNG file, found without decoding it: it inflates no
    pixels, so `--encoding=png` is not held to the speed of 'raw'.

    Raises ValueError unless the file is chunks from a 13-byte IHDR to IEND, each with a
    correct CRC-32: a truncated file or any changed byte fails."""
    position, kinds = len(records.PNG_SIGNATURE), []
    while kinds[-1:] != [b'IEND']:
        if position + _CHUNK_HEAD.size + _CRC.size > len(png):
            raise ValueError('the file ends before its IEND chunk')
        length, kind = _CHUNK_HEAD.unpack_from(png, position)
        crc_position = position + _CHUNK_HEAD.size + length
        if crc_position + _CRC.size > len(png):
            raise ValueError(f'{kind!r} chunk runs past the end of the file')
        # The CRC covers the chunk's type and data, not its length.
        if zlib.crc32(png[position + 4:crc_position]) != _CRC.unpack_from(png, crc_position)[0]:
            raise ValueError(f'{kind!r} chunk fails its CRC check')
        kinds.append(kind)
        position = crc_position + _CRC.size
    if kinds[0] != b'IHDR' or b'IDAT' not in kinds:
        raise ValueError('no IHDR chunk first, or no IDAT chunk')
    length, _, width, height = _IHDR_HEAD.unpack_from(png, len(records.PNG_SIGNATURE))
    if length != 13:
        raise ValueError(f'an IHDR chunk of {length} bytes, not 13')
    return height, width


def _explain_bad_png(batches: Iterable[sources.SourceBatch],
                     kaggle_set: str) -> UserInputError:
    """The error of the first PNG of `batches` that does not decode; their
    headers, already checked, are a 32x32 image's."""
    for batch in batches:
        for image_id, image in zip(batch.ids, batch.images):
            try:
                tf.io.decode_png(image, channels=records.IMAGE_SHAPE[-1])
            except tf.errors.InvalidArgumentError as error:
                reason = error.message.split('[Op')[0].strip().splitlines()[-1]
                return UserInputError(
                    f'{kaggle_set}: image {image_id}.png does not decode ({reason})')
    return UserInputError(f'{kaggle_set}: a PNG does not decode')


def _check_size(image_id: str, height: int, width: int, kaggle_set: str) -> None:
    if (height, width) != records.IMAGE_SHAPE[:2]:
        raise UserInputError(
            f'{kaggle_set}: image {image_id} is {width}x{height} pixels, not '
            f'{records.IMAGE_SHAPE[1]}x{records.IMAGE_SHAPE[0]}')


def split_train(train: LoadedSet, validation_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle's train set to (train, validation) indices, stratified per
    class: positions in id order, whatever the order of the source."""
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


def _write_split(config: ConvertConfig, split: str, loaded: LoadedSet, indices: np.ndarray,
                 hasher: concurrent.futures.Executor) -> tuple:
    """Shuffles a split across its shards, written under their temporary
    names; returns its size, class counts and shards' entries (futures)."""
    # Each split has its own stream, so the order of writing does not matter.
    rng = np.random.default_rng([config.seed, records.SPLITS.index(split)])
    shuffled = rng.permutation(indices)
    count = min(config.num_shards, len(shuffled))
    shards = []
    for index, members in enumerate(np.array_split(shuffled, count)):
        path = os.path.join(config.output_dir, records.shard_name(split, index, count))
        records.write_partial_shard(path, [loaded.records[member] for member in members])
        faults.reached('shard_written')
        shards.append(hasher.submit(records.describe_partial_shard, path, len(members)))
    logging.info('%s: wrote %d images in %d shards', split, len(shuffled), count)
    class_counts = collections.Counter(
        records.class_name(int(label)) for label in loaded.labels[indices])
    return len(shuffled), dict(sorted(class_counts.items())), shards


def _publish(output_dir: str, manifest: records.Manifest,
             existing: records.Manifest | None) -> records.Manifest:
    """Renames every shard into place, then writes the manifest."""
    if existing is not None:
        # Gone first: while old and new shards mix, no manifest vouches for them.
        files.remove(records.manifest_path(output_dir))
    for split in manifest.splits.values():
        for shard in split.shards:
            records.publish(os.path.join(output_dir, shard.name))
            faults.reached('shard_published')
    records.write_manifest(output_dir, manifest)
    faults.reached('manifest_published')
    _remove_unlisted_shards(output_dir, manifest)
    logging.info('Wrote %s: %s', records.manifest_path(output_dir), ', '.join(
        f'{name} {split.num_examples}' for name, split in manifest.splits.items()))
    return manifest


def _existing_manifest(output_dir: str) -> records.Manifest | None:
    if not files.exists(records.manifest_path(output_dir)):
        return None
    try:
        return records.load_manifest(output_dir)
    except UserInputError:
        # An unreadable manifest: treat the folder like any records from
        # other flags; nothing is touched without --overwrite.
        return records.Manifest('unknown', {}, {'unreadable': True})


def _shards_present(output_dir: str, manifest: records.Manifest) -> bool:
    try:
        records.check_shards(output_dir, manifest, records.PRESENT)
    except UserInputError:
        return False
    return True


def _remove_unlisted_shards(output_dir: str, manifest: records.Manifest) -> None:
    """Removes shard files the manifest does not list (an earlier conversion's,
    or a killed one's): no reader takes them for data, but a person might."""
    listed = {shard.name for split in manifest.splits.values() for shard in split.shards}
    for name in files.listdir(output_dir):
        if records.is_shard_file(name) and name not in listed:
            files.remove(os.path.join(output_dir, name))
