"""The tf.data input pipeline: TFRecord shards to training batches.

    shards (manifest) -> read and parse each shard whole, in parallel -> join
    -> cache -> for each epoch: shuffle (images) -> batch -> augment
    -> normalize, one-hot, upsample -> prefetch

Each stage is a small pure function; `make_dataset` chains them and returns
the dataset with its example count. Epoch k's order and augmentation are a
function of the seed and k alone, so a resumed run builds its input from the
epoch it resumes at and sees what an uninterrupted run would have seen.

With `upsample_on='device'` images leave the host as uint8 32x32 (4x less
traffic than float32, 49x less than 224 px) and the model normalizes and
upsamples them on the accelerator.

Depends on the records module alone.
"""

import os

import tensorflow as tf
from absl import logging

from cifar_tfrecord import records
from cifar_tfrecord.config import InputConfig
from cifar_tfrecord.errors import UserInputError

AUTOTUNE = tf.data.AUTOTUNE
# More than a split ever holds: `whole` batches a split into one element.
_WHOLE = 1 << 40
_PADDING = 4
# ImageNet's mean pixel, blue, green, red: what caffe mode subtracts.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


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
    flips = tf.random.stateless_uniform([batch_size], flip_seed) < 0.5
    rows = offsets[:, :1] + tf.range(height)[None, :]
    # A flipped image takes its columns right to left: the gather flips it,
    # at half the cost of reversing the crops and choosing between the two.
    steps = tf.where(flips[:, None], tf.range(width - 1, -1, -1)[None, :], tf.range(width)[None, :])
    columns = offsets[:, 1:] + steps
    # Gathering rows, then columns, per image crops every image at its own offset.
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def normalize(images: tf.Tensor, mode: str) -> tf.Tensor:
    """uint8 images to float32, in the backbone's convention.

    caffe is what ResNet50's ImageNet weights were trained with: BGR, 0..255,
    ImageNet mean subtracted. Scaling to [0, 1] instead quietly costs transfer
    accuracy. The same as Keras' `resnet50.preprocess_input` to the bit
    (tests/test_pipeline.py), in two passes over the batch instead of its four.
    """
    if mode == 'caffe':
        return tf.cast(tf.reverse(images, [-1]), tf.float32) - _CAFFE_MEAN_BGR
    return tf.cast(images, tf.float32) / 255.0


def one_hot(labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """int labels to float32 one-hot targets, optionally smoothed."""
    targets = tf.one_hot(labels, records.NUM_CLASSES, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / records.NUM_CLASSES
    return targets


def upsample(images: tf.Tensor, size: int, method: str) -> tf.Tensor:
    """Images [n, 32, 32, c] to [n, size, size, c]: bilinear (float32), or
    pixel repetition (any dtype).

    TensorFlow's bilinear resize: tf.data runs it without XLA, where it is
    right (the model, which XLA may compile, multiplies by the same weights
    as matrices: `interpolation`), and faster there than those products (the
    input benchmark, docs/measurements.md).
    """
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
                 manifest: records.Manifest | None = None, first_epoch: int = 0,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 service_job: str | None = None) -> tuple[tf.data.Dataset, int]:
    """The dataset of one split, and the number of examples in the split.

    Args:
        config: the input configuration.
        split: 'train', 'validation' or 'test'.
        training: shuffle, augment, smooth labels and drop each epoch's last
            partial batch (static shapes for XLA), epoch after epoch;
            otherwise one pass over every example, in order.
        input_context: from `distribute_datasets_from_function`; gives this
            input pipeline's batch size and its part of the data.
        manifest: the records' manifest, when the caller has loaded it.
        first_epoch, epochs: training only: the epochs [first_epoch, epochs)
            to deliver, endless when `epochs` is None. Epoch k's order and
            augmentation depend on `config.seed` and k alone, so a run
            resumed at epoch k gets the batches it would have had.
        steps_per_epoch: training only: the steps of a Keras epoch (default
            examples // global batch); an epoch delivers exactly that many.
        service_job: training through a tf.data service only: the job the
            workers of one training attempt share, and no other attempt
            (default: 'train').

    Returns:
        (dataset, examples in the split). Elements are (images, one-hot
        labels), and for distributed evaluation (images, labels, weights).
    """
    config.validate()
    manifest = manifest or records.load_manifest(config.records_dir)
    count = manifest.splits[split].num_examples
    paths = checked_shard_paths(config, split, manifest)
    if not training:
        # Every input pipeline evaluates the whole split (`_evaluation_batches`).
        split_tensors = cached(whole(paths, manifest.encoding),
                               cache_path(config.cache, manifest, split, input_context))
        return _evaluation_batches(split_tensors, config, count, input_context), count
    steps_per_epoch = steps_per_epoch or count // config.batch_size
    epoch_range = (tf.data.Dataset.range(first_epoch, epochs) if epochs is not None
                   else tf.data.Dataset.counter(first_epoch))
    batch_size, replicas = _per_replica(config.batch_size, input_context)
    if config.data_service:
        # Each service worker makes whole epochs of the whole split, cached
        # in its own memory whatever --cache says: a cache file would be
        # written by every service worker at once, on hosts that may not see
        # the path.
        split_tensors = cached(whole(paths, manifest.encoding), '')
        replicas = input_context.num_replicas_in_sync if input_context else 1
    else:
        split_tensors = cached(whole(paths, manifest.encoding, input_context),
                               cache_path(config.cache, manifest, split, input_context))
    dataset = epoch_range.flat_map(lambda epoch: epoch_batches(
        split_tensors, config, epoch, batch_size, replicas * steps_per_epoch))
    if config.data_service:
        dataset = _served(dataset, config, service_job)
    return dataset.prefetch(AUTOTUNE), count


def _served(dataset: tf.data.Dataset, config: InputConfig,
            service_job: str | None) -> tf.data.Dataset:
    """Training batches made by tf.data service workers.

    Every pipeline registers the same dataset, the whole split, and joins
    the same job: with dynamic sharding the service hands each epoch (the
    first source is the range of epochs) to one of its workers, and each
    batch to one consumer, so an image comes once an epoch across the
    workers of a job. Which worker gets which batch is not determined, and
    with several service workers a Keras epoch may take batches of two data
    epochs, each worker making its own.
    """
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=config.data_service, job_name=service_job or 'train'))


def _per_replica(batch_size: int, input_context) -> tuple[int, int]:
    """(images per replica, replicas this input pipeline feeds)."""
    if input_context is None:
        return batch_size, 1
    return (input_context.get_per_replica_batch_size(batch_size),
            input_context.num_replicas_in_sync // input_context.num_input_pipelines)


def epoch_batches(split_tensors: tf.data.Dataset, config: InputConfig, epoch: tf.Tensor,
                  batch_size: int, num_batches: int) -> tf.data.Dataset:
    """One epoch's training batches: shuffled, batched, augmented, finished.

    The split is one pair of tensors (`whole`), and each batch is gathered
    from it by a permutation of indices: images are never moved one by one
    through tf.data. The permutation and the augmentation are drawn from
    (config.seed, epoch) alone.
    """
    key = epoch_key(config.seed, epoch)

    def batches(images, labels):
        order = shuffled_order(tf.shape(labels, tf.int64)[0], config.shuffle_buffer_size,
                               key[0], num_batches * batch_size)

        def batch(step):
            # A static batch size, as XLA needs.
            indices = tf.reshape(order[step * batch_size:(step + 1) * batch_size], [batch_size])
            batch_images = tf.gather(images, indices)
            if config.augment:
                batch_images = augment(batch_images, tf.stack([key[1], step]))
            return finish(batch_images, tf.gather(labels, indices), config, True)

        return tf.data.Dataset.range(num_batches).map(batch, num_parallel_calls=AUTOTUNE)

    return split_tensors.flat_map(batches)


def shuffled_order(count: tf.Tensor, window: int | None, seed: tf.Tensor,
                   length: int) -> tf.Tensor:
    """`length` indices into a split of `count` images: a stateless permutation
    of each window of `window` images (default: one window, the whole
    split), window after window, repeated as often as `length` needs.

    `Dataset.shuffle` would mix TensorFlow's global seed into the order, and
    fails outright on a seed computed in the pipeline when the global seed
    is 0. The order repeats when this pipeline's part of the split is too
    small: every epoch has exactly as many steps on every worker, whose
    collective operations must match.
    """
    window = tf.constant(window, tf.int64) if window else count
    windows = -(-count // window)

    def permute_window(index, orders):
        size = tf.minimum(window, count - index * window)
        permutation = tf.argsort(tf.random.stateless_uniform([size], tf.stack([seed, index])))
        return index + 1, orders.write(tf.cast(index, tf.int32),
                                       tf.cast(permutation, tf.int64) + index * window)

    _, orders = tf.while_loop(
        lambda index, _: index < windows, permute_window,
        (tf.constant(0, tf.int64),
         tf.TensorArray(tf.int64, size=tf.cast(windows, tf.int32), infer_shape=False)))
    order = orders.concat()
    return tf.tile(order, [-(-length // count)])[:length]


def epoch_key(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The random key of one epoch: shape [2], int64, a hash of (seed, epoch).

    Its first half seeds the epoch's permutation; its second, with the
    batch's position, the batch's augmentation.
    """
    return tf.random.stateless_uniform(
        [2], tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
        minval=None, maxval=None, dtype=tf.int64)


def _evaluation_batches(split_tensors, config, count, input_context):
    """One pass over the split in order, batched and finished.

    Distributed, a replica must never get an empty batch (ResNet50 fails on
    one), and every worker must run the same number of steps. So each
    worker reads the whole split, padded to full batches with examples of
    weight 0.
    """
    if input_context is None:
        batch_size, padding = config.batch_size, 0
    else:
        batch_size, replicas = _per_replica(config.batch_size, input_context)
        padding = -count % (batch_size * replicas)
    # Keras weights each batch's mean loss by its size, padding included; a
    # real example's weight of padded/real makes the mean over the real
    # examples exact. Weighted metrics do not change under a common factor.
    weight = (count + padding) / count
    steps = -(-(count + padding) // batch_size)

    def batches(images, labels):
        images = tf.concat([images, tf.zeros([padding, *records.IMAGE_SHAPE], tf.uint8)], 0)
        labels = tf.concat([labels, tf.zeros([padding], tf.int64)], 0)
        weights = tf.concat([tf.fill([count], weight), tf.zeros([padding])], 0)

        def batch(step):
            start, end = step * batch_size, (step + 1) * batch_size
            finished = finish(images[start:end], labels[start:end], config, False)
            return finished if input_context is None else (*finished, weights[start:end])

        return tf.data.Dataset.range(steps).map(batch, num_parallel_calls=AUTOTUNE)

    return split_tensors.flat_map(batches)


def whole(paths: list[str], encoding: str,
          input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """The split's records, this worker's part, as one element: all their
    (uint8 images, int64 labels).

    Each shard is parsed whole, the shards in parallel, and joined in shard
    order: faster than parsing the records one by one, or all at once after
    reading them all (docs/measurements.md). Always in the same order: the
    converter spread the records over the shards at random already, and each
    epoch shuffles them (`epoch_batches`). The one element is what the cache
    holds, and what each epoch gathers its batches from.
    """
    workers = input_context.num_input_pipelines if input_context else 1
    files = tf.data.Dataset.from_tensor_slices(paths)
    if workers > 1:
        worker = input_context.input_pipeline_id
        if len(paths) < workers:
            logging.info('Input pipeline %d of %d reads every %dth record (%d files are too '
                         'few to split).', worker, workers, workers, len(paths))
            return tf.data.TFRecordDataset(paths).shard(workers, worker).batch(_WHOLE).map(
                lambda serialized: parse(serialized, encoding))
        logging.info('Input pipeline %d of %d reads its own shard files.', worker, workers)
        files = files.shard(workers, worker)
    parsed = shard_records(files).map(lambda serialized: parse(serialized, encoding),
                                      num_parallel_calls=AUTOTUNE, deterministic=True)
    return parsed.ragged_batch(len(paths)).map(
        lambda images, labels: (images.flat_values, labels.flat_values))


def shard_records(files: tf.data.Dataset) -> tf.data.Dataset:
    """Each shard file's serialized records as one element, the files read in
    parallel, in order; an empty shard gives no element."""
    return files.interleave(lambda path: tf.data.TFRecordDataset(path).batch(_WHOLE),
                            num_parallel_calls=AUTOTUNE, deterministic=True)


def cache_path(cache: str, manifest: records.Manifest, split: str,
               input_context: tf.distribute.InputContext | None = None) -> str:
    """The cache of one split and input pipeline: '' in memory, else a file prefix.

    A file cache is named by the records' fingerprint, the split and the
    pipeline, so it never serves another split, another worker's part, or
    records converted since. TensorFlow reads a finished cache file in place
    of its input, whatever that input is.
    """
    if cache == 'memory':
        return ''
    pipeline_id, pipelines = ((input_context.input_pipeline_id, input_context.num_input_pipelines)
                              if input_context else (0, 1))
    name = f'{manifest.fingerprint()[:16]}-{split}-{pipeline_id}-of-{pipelines}'
    if cache.endswith('/') or tf.io.gfile.isdir(cache):
        return os.path.join(cache, f'cache-{name}')
    return f'{cache}-{name}'


def cached(dataset: tf.data.Dataset, path: str) -> tf.data.Dataset:
    """Caches the decoded uint8 images: in memory (''), or in files at `path`.

    The cache comes before every random or expanding stage, so later epochs
    neither re-read the files nor replay one epoch's augmentation. A file
    cache that a killed process left unfinished is removed: TensorFlow would
    refuse to write over its lock file.

    The cache keeps what it holds only once it has seen the end of its
    input, and the split is one element: the prefetch asks for the end as
    soon as that element is out, so an epoch cut short (`take`, Keras'
    steps) does not throw the cached split away.
    """
    if path and not tf.io.gfile.exists(path + '.index'):
        tf.io.gfile.makedirs(os.path.dirname(path) or '.')
        for leftover in tf.io.gfile.glob(path + '_*'):
            tf.io.gfile.remove(leftover)
    return dataset.cache(path).prefetch(1)


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
    level = records.CHECKSUM if config.verify_checksums else records.PRESENT
    records.check_shards(config.records_dir, manifest, level, [split])
    return records.shard_paths(config.records_dir, split, manifest)


def evaluation_steps(count: int, batch_size: int, input_pipelines: int = 1) -> int:
    """The steps of one distributed pass over a split of `count` images.

    Each input pipeline reads the whole split (see `_evaluation_batches`),
    in batches of batch_size / input_pipelines, the last one padded.
    """
    return -(-count * input_pipelines // batch_size)


def check_batch_divides(batch_size: int, replicas: int) -> None:
    """Refuses a global batch that the replicas cannot share evenly."""
    if batch_size % replicas:
        raise UserInputError(
            f'--batch_size={batch_size} does not divide evenly over {replicas} '
            f'replicas; use a multiple of {replicas}')


def distribute(strategy: tf.distribute.Strategy, config: InputConfig, split: str,
               training: bool, **epochs) -> tuple[tf.distribute.DistributedDataset, int]:
    """`make_dataset` for every replica of a strategy, each with its share.

    `epochs`: make_dataset's first_epoch, epochs, steps_per_epoch and
    service_job, for training.
    """
    replicas = strategy.num_replicas_in_sync
    check_batch_divides(config.batch_size, replicas)
    manifest = records.load_manifest(config.records_dir)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: make_dataset(config, split, training, context, manifest, **epochs)[0])
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
