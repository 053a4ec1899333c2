"""The schema, the shard writer, the manifest, read_split and verify."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import records
from cifar_tfrecord.errors import UserInputError


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, records.IMAGE_SHAPE, dtype=np.uint8)


def _serialized(encoding: str, image: np.ndarray, label: int, example_id: str = '7') -> bytes:
    payload = tf.io.encode_png(image).numpy() if encoding == 'png' else image.tobytes()
    return records.serialize_examples(encoding, [example_id], [payload], np.array([label]))[0]


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_parse_inverts_serialize_eagerly_and_in_tf_data(encoding):
    images = [_image(seed) for seed in range(3)]
    labels = [0, 9, records.UNKNOWN_LABEL]
    serialized = [_serialized(encoding, image, label, str(index))
                  for index, (image, label) in enumerate(zip(images, labels))]

    eager = records.parse_examples(tf.constant(serialized), encoding)
    dataset = tf.data.Dataset.from_tensor_slices(serialized).batch(3).map(
        lambda batch: records.parse_examples(batch, encoding))
    in_graph = next(iter(dataset))

    for parsed in (eager, in_graph):
        np.testing.assert_array_equal(parsed['image'].numpy(), np.stack(images))
        assert parsed['image'].dtype == tf.uint8
        assert parsed['label'].numpy().tolist() == labels
        assert [value.decode() for value in parsed['id'].numpy()] == ['0', '1', '2']


def test_png_records_use_the_model_garden_keys():
    image = _image(0)
    serialized = _serialized('png', image, 3)
    # The TF Model Garden classification decoder reads exactly these keys.
    parsed = tf.io.parse_single_example(serialized, {
        'image/encoded': tf.io.FixedLenFeature([], tf.string),
        'image/class/label': tf.io.FixedLenFeature([], tf.int64),
    })
    np.testing.assert_array_equal(tf.io.decode_png(parsed['image/encoded']).numpy(), image)
    assert int(parsed['image/class/label']) == 3


def test_unlabelled_records_have_no_label_feature():
    example = tf.train.Example.FromString(_serialized('raw', _image(0), records.UNKNOWN_LABEL))
    assert 'image/class/label' not in example.features.feature
    assert 'image/raw' in example.features.feature


def test_unknown_encoding_is_refused():
    with pytest.raises(UserInputError, match="'jpeg'"):
        records.schema('jpeg')


def _write_records_dir(directory, encoding='raw', count=10, num_shards=3):
    images = [_image(seed) for seed in range(count)]
    serialized = [_serialized(encoding, image, index % 10, str(index))
                  for index, image in enumerate(images)]
    shards = []
    for index, part in enumerate(np.array_split(np.arange(count), num_shards)):
        path = os.path.join(directory, records.shard_name('train', index, num_shards))
        records.write_partial_shard(path, [serialized[i] for i in part])
        shards.append(records.describe_partial_shard(path, len(part)))
        records.publish(path)
    counts = {records.CLASS_NAMES[index % 10]: 1 for index in range(count)}
    manifest = records.Manifest(
        encoding, {'train': records.Split(count, dict(sorted(counts.items())), tuple(shards))},
        provenance={'test': True})
    records.write_manifest(directory, manifest)
    return images


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_read_split_yields_ids_uint8_images_and_int_labels(tmp_path, encoding):
    images = _write_records_dir(str(tmp_path), encoding)
    read = list(records.read_split(str(tmp_path), 'train', batch_size=4))
    assert [example_id for example_id, _, _ in read] == [str(index) for index in range(10)]
    for index, (_, image, label) in enumerate(read):
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        np.testing.assert_array_equal(image, images[index])
        assert isinstance(label, int) and label == index % 10


def test_no_partial_file_is_left_and_manifest_round_trips(tmp_path):
    _write_records_dir(str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert not [name for name in names if name.endswith(records.PARTIAL_SUFFIX)]
    manifest = records.load_manifest(str(tmp_path))
    assert manifest == records.Manifest.from_json(manifest.to_json())
    data = json.loads((tmp_path / 'manifest.json').read_text())
    assert data['class_names'] == list(records.CLASS_NAMES)
    assert data['splits']['train']['shards'][0]['sha256'] == records.file_digest(
        str(tmp_path / data['splits']['train']['shards'][0]['name']))[0]


def test_verify_accepts_intact_records(tmp_path):
    _write_records_dir(str(tmp_path))
    assert records.verify(str(tmp_path)) == {'train': 10}


def test_verify_names_a_changed_shard(tmp_path):
    _write_records_dir(str(tmp_path))
    shard = tmp_path / records.shard_name('train', 1, 3)
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match=records.shard_name('train', 1, 3)):
        records.verify(str(tmp_path))


def test_verify_names_a_missing_shard(tmp_path):
    _write_records_dir(str(tmp_path))
    (tmp_path / records.shard_name('train', 2, 3)).unlink()
    with pytest.raises(UserInputError, match='train-00002-of-00003.tfrecord.*missing'):
        records.verify(str(tmp_path))


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match='manifest.json not found.*convert'):
        records.load_manifest(str(tmp_path))


def test_unknown_split_is_a_clear_error(tmp_path):
    _write_records_dir(str(tmp_path))
    with pytest.raises(UserInputError, match="'test'.*train"):
        list(records.read_split(str(tmp_path), 'test'))


def test_fingerprint_follows_the_records_not_their_folder_or_provenance(tmp_path):
    first, second, other = (str(tmp_path / name) for name in ('first', 'second', 'other'))
    for directory in (first, second, other):
        os.makedirs(directory)
    _write_records_dir(first)
    _write_records_dir(second)
    _write_records_dir(other, count=11)
    fingerprint = records.load_manifest(first).fingerprint()
    assert len(fingerprint) == 64
    moved = dataclasses.replace(records.load_manifest(second), provenance={'elsewhere': 1})
    assert moved.fingerprint() == fingerprint
    assert records.load_manifest(other).fingerprint() != fingerprint
    renamed = dataclasses.replace(records.load_manifest(first), class_names=('a',) * 10)
    assert renamed.fingerprint() != fingerprint
