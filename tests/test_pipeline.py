"""The tf.data input pipeline: stages, the builder, distribution, bad input."""

import collections
import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import convert
from cifar_tfrecord import interpolation
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord.config import ConvertConfig, InputConfig
from cifar_tfrecord.errors import UserInputError

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
LABELS = np.array([0, 3, 9, 1, 2, 5], dtype=np.int64)
SEED = np.array([7, 11], dtype=np.int64)


def _eager_and_in_tf_data(function, *inputs):
    """The function's result called eagerly, and inside tf.data.map."""
    eager = function(*[tf.constant(value) for value in inputs])
    dataset = tf.data.Dataset.from_tensors(tuple(inputs)).map(function)
    return eager, next(iter(dataset))


@pytest.mark.parametrize('name, function, inputs', [
    ('augment', pipeline.augment, (IMAGES, SEED)),
    ('normalize caffe', lambda images: pipeline.normalize(images, 'caffe'), (IMAGES,)),
    ('normalize unit', lambda images: pipeline.normalize(images, 'unit'), (IMAGES,)),
    ('one_hot', lambda labels: pipeline.one_hot(labels, 0.1), (LABELS,)),
    ('upsample bilinear', lambda images: pipeline.upsample(images, 64, 'bilinear'), (IMAGES,)),
    ('upsample repeat', lambda images: pipeline.upsample(images, 96, 'repeat'), (IMAGES,)),
])
def test_stages_agree_eagerly_and_in_tf_data(name, function, inputs):
    eager, in_graph = _eager_and_in_tf_data(function, *inputs)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(in_graph), rtol=1e-6)


def test_parse_agrees_eagerly_and_in_tf_data():
    # dtype=object: numpy's fixed-width bytes would drop a record's trailing
    # zero bytes (a label 0 serialized last), and the record would not parse.
    serialized = np.array(records.serialize_examples(
        'raw', [str(index) for index in range(len(IMAGES))],
        [image.tobytes() for image in IMAGES], np.asarray(LABELS, np.int64)), dtype=object)
    eager, in_graph = _eager_and_in_tf_data(lambda batch: pipeline.parse(batch, 'raw'), serialized)
    for result in (eager, in_graph):
        np.testing.assert_array_equal(result[0], IMAGES)
        np.testing.assert_array_equal(result[1], LABELS)


def test_augment_crops_a_padded_window_and_maybe_flips():
    augmented = pipeline.augment(tf.constant(IMAGES), tf.constant(SEED)).numpy()
    padded = np.pad(IMAGES, [(0, 0), (4, 4), (4, 4), (0, 0)])
    for original, result in zip(padded, augmented):
        windows = [window for row in range(9) for column in range(9)
                   for window in (original[row:row + 32, column:column + 32],
                                  original[row:row + 32, column:column + 32][:, ::-1])]
        assert any(np.array_equal(window, result) for window in windows)
    same = pipeline.augment(tf.constant(IMAGES), tf.constant(SEED)).numpy()
    other = pipeline.augment(tf.constant(IMAGES), tf.constant(SEED + 1)).numpy()
    np.testing.assert_array_equal(augmented, same)
    assert not np.array_equal(augmented, other)


def test_caffe_normalization_is_keras_resnet50_preprocessing():
    expected = keras.applications.resnet50.preprocess_input(IMAGES.astype(np.float32))
    result = pipeline.normalize(tf.constant(IMAGES), 'caffe').numpy()
    np.testing.assert_array_equal(result, expected)
    # BGR order, mean subtracted, no scaling.
    np.testing.assert_allclose(result[..., 0], IMAGES[..., 2] - 103.939, atol=1e-4)


def test_one_hot_smooths_and_sums_to_one():
    targets = pipeline.one_hot(tf.constant(LABELS), 0.1).numpy()
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert targets[0, 0] == pytest.approx(0.91) and targets[0, 1] == pytest.approx(0.01)


def test_upsample_by_repetition_repeats_pixels():
    result = pipeline.upsample(tf.constant(IMAGES), 64, 'repeat').numpy()
    np.testing.assert_array_equal(result[:, ::2, ::2], IMAGES)
    np.testing.assert_array_equal(result[:, 1::2, 1::2], IMAGES)


# ----------------------------------------------------------------------------
# The builder, against the records it reads.


def _config(records_dir, **overrides):
    values = dict(records_dir=records_dir, batch_size=10, image_size=32, augment=False,
                  label_smoothing=0.0)
    values.update(overrides)
    return InputConfig(**values)


def _examples(batches):
    """Every (image bytes, label) in some batches, as a multiset."""
    found = collections.Counter()
    for images, targets in batches:
        for image, target in zip(np.asarray(images), np.asarray(targets)):
            found[(image.tobytes(), int(np.argmax(target)))] += 1
    return found


def _expected(records_dir, split):
    return collections.Counter((image.tobytes(), label)
                               for _, image, label in records.read_split(records_dir, split))


def test_training_epoch_holds_every_record_once(sample_records):
    dataset, count = pipeline.make_dataset(_config(sample_records), 'train', training=True)
    assert count == 60
    batches = list(dataset.take(18).as_numpy_iterator())
    # The first epoch is read from the files, the next ones from the cache.
    for epoch in (batches[:6], batches[6:12], batches[12:]):
        assert _examples(epoch) == _expected(sample_records, 'train')


def test_evaluation_keeps_the_partial_batch(sample_records):
    dataset, count = pipeline.make_dataset(
        _config(sample_records, batch_size=7), 'validation', training=False)
    assert count == 20
    sizes = [images.shape[0] for images, _ in dataset]
    assert sizes == [7, 7, 6]
    assert _examples(dataset) == _expected(sample_records, 'validation')


def test_training_drops_the_partial_batch_for_static_shapes(sample_records):
    dataset, _ = pipeline.make_dataset(_config(sample_records, batch_size=25), 'train', True)
    assert [images.shape[0] for images, _ in dataset.take(2)] == [25, 25]
    assert dataset.element_spec[0].shape == (25, 32, 32, 3)


def _orders(dataset, epochs=2, batches=6):
    """The image order of each of the first epochs of a training dataset."""
    batches_seen = [images.tobytes() for images, _ in
                    dataset.take(epochs * batches).as_numpy_iterator()]
    return [batches_seen[index * batches:(index + 1) * batches] for index in range(epochs)]


def test_a_seed_gives_the_same_order_and_epochs_differ(sample_records):
    config = _config(sample_records, augment=True, seed=3)
    first, _ = pipeline.make_dataset(config, 'train', True)
    second, _ = pipeline.make_dataset(config, 'train', True)
    first_epochs = _orders(first)
    assert first_epochs == _orders(second)
    assert first_epochs[0] != first_epochs[1]
    other, _ = pipeline.make_dataset(dataclasses.replace(config, seed=4), 'train', True)
    assert _orders(other)[0] != first_epochs[0]


def test_shuffling_mixes_images_not_only_batches(sample_records):
    dataset, _ = pipeline.make_dataset(_config(sample_records), 'train', True)
    batches = [frozenset(image.tobytes() for image in images)
               for images, _ in dataset.take(12).as_numpy_iterator()]
    # The second epoch's batches are new groupings, not the first's reordered.
    assert set(batches[:6]) != set(batches[6:])


def test_host_upsampling_normalizes_and_resizes(sample_records):
    config = _config(sample_records, upsample_on='host', image_size=64)
    dataset, _ = pipeline.make_dataset(config, 'validation', False)
    images, _ = next(iter(dataset))
    assert images.dtype == tf.float32 and images.shape[1:] == (64, 64, 3)
    assert images.numpy().min() < 0  # Mean subtracted: caffe.


def test_device_upsampling_leaves_uint8_32px_for_the_model(sample_records):
    dataset, _ = pipeline.make_dataset(_config(sample_records, image_size=224), 'train', True)
    assert dataset.element_spec[0].dtype == tf.uint8
    assert dataset.element_spec[0].shape[1:] == (32, 32, 3)


def test_file_cache(sample_records, tmp_path):
    config = _config(sample_records, cache=str(tmp_path / 'cache'))
    dataset, _ = pipeline.make_dataset(config, 'train', True)
    epochs = list(dataset.take(12).as_numpy_iterator())
    assert _examples(epochs[:6]) == _expected(sample_records, 'train')
    assert any(name.startswith('cache') for name in os.listdir(tmp_path))
    assert _examples(epochs[6:]) == _expected(sample_records, 'train')


def _batches(dataset):
    return [images.tobytes() + targets.tobytes() for images, targets in dataset.as_numpy_iterator()]


@pytest.mark.parametrize('cache', ['memory', 'file'])
def test_epoch_k_depends_on_the_seed_and_k_alone(sample_records, tmp_path, cache):
    config = _config(sample_records, augment=True, label_smoothing=0.1, seed=5,
                     cache='memory' if cache == 'memory' else str(tmp_path / 'cache'))
    whole, _ = pipeline.make_dataset(config, 'train', True, epochs=4, steps_per_epoch=3)
    batches = _batches(whole)
    assert len(batches) == 12  # Exactly steps_per_epoch batches an epoch.
    assert len(set(batches)) == 12
    # A run resumed at epoch 2 gets the batches an uninterrupted run gets there.
    resumed, _ = pipeline.make_dataset(config, 'train', True, first_epoch=2, epochs=4,
                                       steps_per_epoch=3)
    assert _batches(resumed) == batches[6:]
    other, _ = pipeline.make_dataset(dataclasses.replace(config, seed=6), 'train', True,
                                     first_epoch=2, epochs=4, steps_per_epoch=3)
    assert not set(_batches(other)) & set(batches)


def test_a_small_part_of_the_split_still_fills_every_epoch(sample_records):
    # Two workers: each reads 2 of the 4 train shards, 30 images, and 4 steps
    # of 10 images need 40: the epoch's permutation repeats, and the next
    # epoch starts where it should.
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    config = _config(sample_records, batch_size=20)
    whole, _ = pipeline.make_dataset(config, 'train', True, context, epochs=2,
                                     steps_per_epoch=4)
    batches = list(whole.as_numpy_iterator())
    assert [images.shape[0] for images, _ in batches] == [10] * 8
    first_epoch = _examples(batches[:4])
    assert sum(first_epoch.values()) == 40 and len(first_epoch) == 30
    later, _ = pipeline.make_dataset(config, 'train', True, context, first_epoch=1, epochs=2,
                                     steps_per_epoch=4)
    assert _batches(later) == [images.tobytes() + targets.tobytes()
                               for images, targets in batches[4:]]


def test_a_file_cache_serves_each_split_its_own_images(sample_records, tmp_path):
    # The cache's folder does not exist yet; the training cache is finished
    # before the validation split is read with the same --cache.
    config = _config(sample_records, cache=str(tmp_path / 'missing' / 'cache'))
    training, _ = pipeline.make_dataset(config, 'train', True, epochs=1)
    assert _examples(training.as_numpy_iterator()) == _expected(sample_records, 'train')
    validation, _ = pipeline.make_dataset(config, 'validation', False)
    for _ in range(2):  # Written, then read back from the file.
        assert _examples(validation) == _expected(sample_records, 'validation')
    names = os.listdir(tmp_path / 'missing')
    assert sum(name.endswith('.index') for name in names) == 2


def test_a_file_cache_never_outlives_a_conversion(records_copy, tmp_path):
    config = _config(str(records_copy), cache=str(tmp_path / 'cache'))
    dataset, _ = pipeline.make_dataset(config, 'validation', False)
    assert _examples(dataset) == _expected(str(records_copy), 'validation')
    convert.convert(ConvertConfig(
        source='sample', output_dir=str(records_copy), sample_images_per_class=8,
        sample_test_images=12, num_shards=4, validation_fraction=0.25, seed=7, overwrite=True))
    new_images = _expected(str(records_copy), 'validation')
    dataset, _ = pipeline.make_dataset(config, 'validation', False)
    assert _examples(dataset) == new_images
    assert not set(new_images) & set(_expected(str(records_copy), 'train'))


def test_a_file_cache_left_unfinished_by_a_killed_run_is_rewritten(sample_records, tmp_path):
    config = _config(sample_records, cache=str(tmp_path))  # A folder: files go inside.
    manifest = records.load_manifest(sample_records)
    path = pipeline.cache_path(config.cache, manifest, 'validation')
    assert os.path.dirname(path) == str(tmp_path)
    # What TensorFlow leaves when its cache writer is killed.
    for leftover in ('_0.lockfile', '_0.data-00000-of-00001.tempstate123'):
        with open(path + leftover, 'wb') as file:
            file.write(b'partial')
    dataset, _ = pipeline.make_dataset(config, 'validation', False)
    assert _examples(dataset) == _expected(sample_records, 'validation')
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(path) + suffix for suffix in ('.index', '.data-00000-of-00001'))


def test_two_replicas_each_get_their_per_replica_batch(sample_records):
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    dataset, _ = pipeline.distribute(strategy, _config(sample_records), 'train', True)
    images, targets = next(iter(dataset))
    local_images = strategy.experimental_local_results(images)
    assert len(local_images) == 2
    assert [tuple(part.shape) for part in local_images] == [(5, 32, 32, 3)] * 2
    assert [part.shape[0] for part in strategy.experimental_local_results(targets)] == [5, 5]


def test_batch_not_divisible_by_replicas_is_refused(sample_records):
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with pytest.raises(UserInputError, match='--batch_size=9.*2 replicas'):
        pipeline.distribute(strategy, _config(sample_records, batch_size=9), 'train', True)


def test_tf_data_service_delivers_the_same_examples(sample_records):
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split('://')[1]
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
    config = _config(sample_records, data_service=dispatcher.target)
    dataset, count = pipeline.make_dataset(config, 'train', training=True)
    epoch = list(dataset.take(count // config.batch_size).as_numpy_iterator())
    assert _examples(epoch) == _expected(sample_records, 'train')
    del worker, dispatcher


def test_workers_sharing_a_service_job_get_each_image_once_an_epoch(sample_records):
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target.split('://')[1]
    service_workers = [tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
        for _ in range(2)]
    config = _config(sample_records, batch_size=20, data_service=dispatcher.target)
    # Two training workers of one job, two epochs (the trainer asks for
    # endless epochs: consumers take batches at uneven rates).
    datasets = [pipeline.make_dataset(config, 'train', True, tf.distribute.InputContext(2, index, 2),
                                      epochs=2, service_job='run-1')[0] for index in range(2)]
    delivered = [list(dataset.as_numpy_iterator()) for dataset in datasets]
    found = _examples(batch for batches in delivered for batch in batches)
    # Each of the 60 images twice: once in each epoch, to one of the workers.
    assert found == collections.Counter({example: 2 for example in
                                         _expected(sample_records, 'train')})
    del service_workers, dispatcher


def test_evaluation_reads_every_image_in_process_even_with_a_service(sample_records):
    # Through the service, a second pass would join the first pass's job.
    config = _config(sample_records, data_service='grpc://localhost:1')  # Nothing there.
    dataset, _ = pipeline.make_dataset(config, 'validation', training=False)
    for _ in range(2):
        assert _examples(dataset) == _expected(sample_records, 'validation')


# ----------------------------------------------------------------------------
# Bad input.


@pytest.fixture
def records_copy(sample_records, tmp_path):
    copy = tmp_path / 'records'
    shutil.copytree(sample_records, copy)
    return copy


def _shard(records_dir, split='train', index=1):
    return records_dir / records.shard_name(split, index, 4)


def test_missing_manifest(tmp_path):
    with pytest.raises(UserInputError, match='manifest.json not found'):
        pipeline.make_dataset(_config(str(tmp_path)), 'train', True)


def test_missing_shard(records_copy):
    _shard(records_copy).unlink()
    with pytest.raises(UserInputError, match=f'{_shard(records_copy)} .*missing'):
        pipeline.make_dataset(_config(str(records_copy)), 'train', True)


def test_checksum_mismatch(records_copy):
    data = bytearray(_shard(records_copy).read_bytes())
    data[100] ^= 1
    _shard(records_copy).write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=f'{_shard(records_copy)} .*checksum'):
        pipeline.make_dataset(_config(str(records_copy)), 'train', True)


def test_truncated_shard(records_copy):
    _shard(records_copy).write_bytes(_shard(records_copy).read_bytes()[:-7])
    with pytest.raises(UserInputError, match=f'{_shard(records_copy)} .*wrong size'):
        pipeline.make_dataset(_config(str(records_copy), verify_checksums=False), 'train', True)


@pytest.mark.parametrize('overrides, message', [
    (dict(batch_size=0), '--batch_size=0'),
    (dict(image_size=16), '--image_size=16'),
    (dict(image_size=100, upsample_method='repeat'), 'multiple of 32'),
    (dict(normalization='imagenet'), '--normalization=imagenet'),
    (dict(data_service='localhost:5000'), 'grpc://'),
])
def test_bad_configuration(sample_records, overrides, message):
    # config.py holds the defaults and checks only: ValueError, which the
    # scripts report as a UserInputError (cli.config_from_flags).
    with pytest.raises(ValueError, match=message):
        pipeline.make_dataset(_config(sample_records, **overrides), 'train', True)


def test_temporary_files_stay_under_pytests_folder(_temporary_files_under_pytest):
    # tf.data's autograph writes each converted function to a temporary file.
    dataset = tf.data.Dataset.range(3).map(lambda value: value * 2 if value > 1 else value)
    assert list(dataset.as_numpy_iterator()) == [0, 1, 4]
    assert tempfile.gettempdir() == str(_temporary_files_under_pytest)
    assert any(name.startswith('__autograph_generated_file')
               for name in os.listdir(_temporary_files_under_pytest))


def test_bilinear_matrices_are_tensorflows_resize_with_and_without_xla():
    images = tf.constant(IMAGES, tf.float32)
    for size in (33, 64, 96, 224):
        expected = tf.image.resize(images, [size, size], method='bilinear').numpy()
        np.testing.assert_array_equal(pipeline.upsample(images, size, 'bilinear').numpy(),
                                      expected)
        matrix = tf.constant(interpolation.bilinear_matrix(32, size))

        def products(batch):
            along_height = tf.einsum(interpolation.ALONG_HEIGHT, batch, matrix)
            return tf.einsum(interpolation.ALONG_WIDTH, along_height, matrix)

        # The same weights, summed in another order: float32 rounding of 0..255 values.
        for compiled in (False, True):
            upsampled = tf.function(products, jit_compile=compiled)(images).numpy()
            np.testing.assert_allclose(upsampled, expected, rtol=0, atol=2e-3)
    weights = interpolation.bilinear_matrix(32, 224)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert (weights >= 0).all() and (np.count_nonzero(weights, axis=1) <= 2).all()
