"""The tf.data input pipeline: TFRecord shards to training batches.

    shards (manifest) -> read (interleave) -> parse (vectorized) -> cache
    -> shuffle (images) -> batch -> augment -> normalize, one-hot, upsample
    -> prefetch

Each stage is a small pure function; `make_dataset` chains them and returns
the dataset with its example count. With `upsample_on='device'` images leave
the host as uint8 32x32 (4x less traffic than float32, 49x less than 224 px)
and the model normalizes and upsamples them on the accelerator.

Depends on the records module alone.
"""


import keras
import tensorflow as tf
from absl import logging

from cifar_tfrecord import records
from cifar_tfrecord.config import InputConfig
from cifar_tfrecord.errors import UserInputError

AUTOTUNE = tf.data.AUTOTUNE
# Records parsed per parse_example call: large enough to amortize the op.
_PARSE_BATCH = 1024
_PADDING = 4
# Shuffle buffer of the first epoch, which is read from the files.
_FIRST_EPOCH_SHUFFLE_BUFFER = 8192


# ----------------------------------------------------------------------------
# Stage functions. Each works the same eagerly and inside tf.data.map.


def parse(serialized: tf.Tensor, encoding: str) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of records to (uint8 images [n, 32, 32, 3], int64 labels [n])."""
    parsed = records.parse_examples(serialized, encoding)
    return parsed['image'], parsed['label']


def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded images, and random flips.

    Vectorized over the batch, and stateless: the same seed (shape [2]) gives
    the same crops and flips.
    """
    batch_size = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [_PADDING, _PADDING], [_PADDING, _PADDING], [0, 0]])
    offset_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    offsets = tf.random.stateless_uniform(
        [batch_size, 2], offset_seed, maxval=2 * _PADDING + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    columns = offsets[:, 1:] + tf.range(width)[None, :]
    # Gathering rows, then columns, per image crops every image at its own offset.
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, columns, axis=2, batch_dims=1)
    flips = tf.random.stateless_uniform([batch_size], flip_seed) < 0.5
    return tf.where(flips[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def normalize(images: tf.Tensor, mode: str) -> tf.Tensor:
    """uint8 images to float32, in the backbone's convention.

    caffe is what ResNet50's ImageNet weights were trained with: BGR, 0..255,
    ImageNet mean subtracted. Scaling to [0, 1] instead quietly costs transfer
    accuracy. The formula is Keras' own, so host and model agree exactly.
    """
    images = tf.cast(images, tf.float32)
    if mode == 'caffe':
        return keras.applications.resnet50.preprocess_input(images)
    return images / 255.0


def one_hot(labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """int labels to float32 one-hot targets, optionally smoothed."""
    targets = tf.one_hot(labels, records.NUM_CLASSES, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / records.NUM_CLASSES
    return targets


def upsample(images: tf.Tensor, size: int, method: str) -> tf.Tensor:
    """Images [n, 32, 32, c] to [n, size, size, c]: bilinear, or pixel repetition."""
    if size == images.shape[1]:
        return images
    if method == 'repeat':
        factor = size // images.shape[1]
        return tf.repeat(tf.repeat(images, factor, axis=1), factor, axis=2)
    return tf.image.resize(images, [size, size], method='bilinear')


# ----------------------------------------------------------------------------
# The builder.


def make_dataset(config: InputConfig, split: str, training: bool,
                 input_context: tf.distribute.InputContext | None = None,
                 manifest: records.Manifest | None = None) -> tuple[tf.data.Dataset, int]:
    """The dataset of one split, and the number of examples in the split.

    Args:
        config: the input configuration.
        split: 'train', 'validation' or 'test'.
        training: shuffle, augment, smooth labels, drop the last partial batch
            (static shapes for XLA) and repeat endlessly, count // batch_size
            batches an epoch; otherwise one pass over every example, in order.
        input_context: from `distribute_datasets_from_function`; gives this
            input pipeline's batch size and its part of the data.
        manifest: the records' manifest, when the caller has loaded it.

    Returns:
        (dataset, examples in the split). Elements are (images, one-hot
        labels), and for distributed evaluation (images, labels, weights).
    """
    config.validate()
    manifest = manifest or records.load_manifest(config.records_dir)
    paths = checked_shard_paths(config, split, manifest)
    count = manifest.splits[split].num_examples
    batch_size = config.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
    if training:
        dataset = _training_batches(paths, manifest.encoding, config, batch_size, count,
                                    input_context)
    else:
        dataset = _evaluation_batches(paths, manifest.encoding, config, batch_size, count,
                                      input_context)
    # Only training goes through the service. Evaluation is light (no
    # augmentation) and each pass must see every image once; a second pass
    # through the service would join the first, finished job of the same
    # name, and get what is left of it, or nothing.
    if config.data_service and training:
        dataset = dataset.apply(tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            service=config.data_service, job_name=f'{split}_train'))
    return dataset.prefetch(AUTOTUNE), count


def _training_batches(paths, encoding, config, batch_size, count, input_context):
    dataset = decoded(read(paths, True, config.seed, input_context), encoding)
    dataset = shuffled_epochs(dataset, config, count, batch_size)
    if config.augment:
        dataset = with_seeds(dataset, config.seed).map(
            lambda seed, batch: (augment(batch[0], seed), batch[1]),
            num_parallel_calls=AUTOTUNE)
    return dataset.map(lambda images, labels: finish(images, labels, config, True),
                       num_parallel_calls=AUTOTUNE)


def _evaluation_batches(paths, encoding, config, batch_size, count, input_context):
    if input_context is None:
        dataset = cached(decoded(read(paths, False, config.seed), encoding), config.cache)
        return dataset.batch(batch_size, num_parallel_calls=AUTOTUNE).map(
            lambda images, labels: finish(images, labels, config, False),
            num_parallel_calls=AUTOTUNE)
    # Distributed: a replica must never get an empty batch (ResNet50 fails on
    # one), and every worker must run the same number of steps. So each
    # worker reads the whole split, padded to full batches with examples of
    # weight 0, which leave the metrics exact.
    local_replicas = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    padding = -count % (batch_size * local_replicas)
    dataset = cached(decoded(read(paths, False, config.seed), encoding), config.cache)
    dataset = dataset.map(lambda image, label: (image, label, 1.0)).concatenate(
        tf.data.Dataset.from_tensors(
            (tf.zeros(records.IMAGE_SHAPE, tf.uint8), tf.constant(0, tf.int64), 0.0)
        ).repeat(padding))
    return dataset.batch(batch_size, num_parallel_calls=AUTOTUNE).map(
        lambda images, labels, weights: (*finish(images, labels, config, False), weights),
        num_parallel_calls=AUTOTUNE)


def decoded(serialized: tf.data.Dataset, encoding: str) -> tf.data.Dataset:
    """Serialized records to (uint8 image, int64 label), parsed in batches."""
    return serialized.batch(_PARSE_BATCH).map(
        lambda batch: parse(batch, encoding), num_parallel_calls=AUTOTUNE).unbatch()


def read(paths: list[str], training: bool, seed: int,
         input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Serialized records from the shards, interleaved, this worker's part only."""
    files = tf.data.Dataset.from_tensor_slices(paths)
    workers = input_context.num_input_pipelines if input_context else 1
    shard_by_file = workers > 1 and len(paths) >= workers
    if shard_by_file:
        files = files.shard(workers, input_context.input_pipeline_id)
    if training:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = files.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(paths), 16),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if workers > 1:
        if not shard_by_file:
            dataset = dataset.shard(workers, input_context.input_pipeline_id)
        logging.info('Input pipeline %d of %d reads %s.', input_context.input_pipeline_id,
                     workers, 'its own shard files' if shard_by_file
                     else f'every {workers}th record ({len(paths)} files are too few to split)')
    return dataset


def cached(dataset: tf.data.Dataset, cache: str) -> tf.data.Dataset:
    """Caches the decoded uint8 images: 'memory', or files at a path prefix.

    The cache comes before every random or expanding stage, so later epochs
    neither re-read the files nor replay one epoch's augmentation.
    """
    return dataset.cache('' if cache == 'memory' else cache)


def shuffled_epochs(dataset: tf.data.Dataset, config: InputConfig, num_examples: int,
                    batch_size: int) -> tf.data.Dataset:
    """Endless batches of the cached images, epoch after epoch, each reshuffled.

    Keras counts the steps of an epoch: num_examples // batch_size. Later
    epochs shuffle the whole split (by default) from the cache. The first is
    shuffled as it is read, through a smaller buffer: a full one would hold
    back the first batch until every file was read, so reading would not
    overlap the rest of the work. The first epoch is still well mixed: the
    converter wrote the records in random order across shards, and they are
    read from shuffled, interleaved files.
    """
    buffer_size = config.shuffle_buffer_size or num_examples

    def epochs(images: tf.data.Dataset, shuffle_buffer_size: int, part: int) -> tf.data.Dataset:
        # Each part has its own seed: with one seed, the second part's first
        # epoch would repeat the first's order of the same cached images.
        shuffled = images.shuffle(shuffle_buffer_size, seed=config.seed * 2 + part,
                                  reshuffle_each_iteration=True)
        # drop_remainder keeps shapes static for XLA.
        return shuffled.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)

    if config.data_service:
        # A tf.data service worker sees different files each epoch, where a
        # cache would replay the first; it reads from the files instead.
        return epochs(dataset, buffer_size, 0).repeat()
    images = cached(dataset, config.cache)
    # The second part starts when the first has read every image, so it
    # finds the cache complete.
    first = epochs(images, min(buffer_size, _FIRST_EPOCH_SHUFFLE_BUFFER), 0)
    return first.concatenate(epochs(images, buffer_size, 1).repeat())


def with_seeds(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Pairs each element with a fresh stateless seed; new seeds every epoch."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(seeds, dataset)


def finish(images: tf.Tensor, labels: tf.Tensor, config: InputConfig,
           training: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """One-hot labels; and, when the host does it, normalize and upsample."""
    targets = one_hot(labels, config.label_smoothing if training else 0.0)
    if config.upsample_on == 'host':
        images = upsample(normalize(images, config.normalization),
                          config.image_size, config.upsample_method)
    return images, targets


def checked_shard_paths(config: InputConfig, split: str,
                        manifest: records.Manifest) -> list[str]:
    """The split's shard paths, each present, of the right size and checksum."""
    paths = records.shard_paths(config.records_dir, split, manifest)
    for path, shard in zip(paths, manifest.splits[split].shards):
        if not tf.io.gfile.exists(path):
            raise UserInputError(f'shard {path} is listed in the manifest but missing')
        if tf.io.gfile.stat(path).length != shard.num_bytes:
            raise UserInputError(f'shard {path} has the wrong size (corrupt or changed)')
        if config.verify_checksums and records.file_digest(path)[0] != shard.sha256:
            raise UserInputError(
                f'shard {path} does not match its manifest checksum (corrupt or changed)')
    return paths


def distribute(strategy: tf.distribute.Strategy, config: InputConfig, split: str,
               training: bool) -> tuple[tf.distribute.DistributedDataset, int]:
    """`make_dataset` for every replica of a strategy, each with its share."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserInputError(
            f'--batch_size={config.batch_size} does not divide evenly over {replicas} '
            f'replicas; use a multiple of {replicas}')
    manifest = records.load_manifest(config.records_dir)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, split, training, context, manifest)[0])
    logging.info('%s: %d replicas, %d images per replica per step', split, replicas,
                 config.batch_size // replicas)
    return dataset, manifest.splits[split].num_examples


def make_prediction_dataset(records_dir: str, split: str,
                            batch_size: int) -> tf.data.Dataset:
    """(uint8 images, ids) of a split in manifest order, for predictions."""
    manifest = records.load_manifest(records_dir)
    config = InputConfig(records_dir=records_dir)
    paths = checked_shard_paths(config, split, manifest)
    dataset = tf.data.TFRecordDataset(paths).batch(batch_size)
    dataset = dataset.map(lambda serialized: records.parse_examples(serialized, manifest.encoding),
                          num_parallel_calls=AUTOTUNE)
    return dataset.map(lambda parsed: (parsed['image'], parsed['id'])).prefetch(AUTOTUNE)
