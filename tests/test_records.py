"""The schema, the shard writer, the manifest, read_split and verify."""

import collections
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import files
from cifar_tfrecord import json_fields
from cifar_tfrecord import records
from cifar_tfrecord.errors import UserInputError
from conftest import run_script


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
    counts = collections.Counter(records.CLASS_NAMES[index % 10] for index in range(count))
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
    assert not [name for name in names if files.PARTIAL in name]
    manifest = records.load_manifest(str(tmp_path))
    assert manifest == records.parse_manifest(json.loads(json_fields.to_json(manifest)))
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


# ----------------------------------------------------------------------------
# A hand-edited manifest.json, through every script that reads it: one line
# naming the file and the key, exit status 1, nothing written.


def _edit(change):
    """A spoiling of a records folder: `change(manifest)` edits its JSON in place."""
    def spoil(folder):
        path = folder / 'manifest.json'
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest, indent=2))
    return spoil


def _truncate(folder):
    path = folder / 'manifest.json'
    path.write_bytes(path.read_bytes()[:200])


def _remove_shards(folder):
    """A shard of every split: each script reads some of the splits."""
    for split in records.SPLITS:
        (folder / records.shard_name(split, 1, 4)).unlink()


def _shard(manifest, index=0):
    return manifest['splits']['train']['shards'][index]


MANIFEST = records.MANIFEST_NAME
BAD_MANIFESTS = {
    # name: (spoiling, the file or shard the line names, key words of the line)
    'truncated': (_truncate, MANIFEST, ['not valid JSON']),
    'not_utf8': (lambda folder: (folder / MANIFEST).write_bytes(b'{"\xff": 1}'), MANIFEST,
                 ['not UTF-8']),
    'a_list': (lambda folder: (folder / MANIFEST).write_text('[1, 2]'), MANIFEST,
               ['JSON object', '[1, 2]']),
    'missing_key': (_edit(lambda manifest: manifest['splits']['train'].pop('class_counts')),
                    MANIFEST, ['lacks the key splits.train.class_counts']),
    'unknown_key': (_edit(lambda manifest: manifest.update(comment='mine')), MANIFEST,
                    ['unknown key comment']),
    'schema_version': (_edit(lambda manifest: manifest.update(schema_version=2)), MANIFEST,
                       ['schema_version is 2', 'convert the data again']),
    'split_count': (_edit(lambda manifest: manifest['splits']['train'].update(num_examples=49)),
                    MANIFEST, ['splits.train.num_examples is 49', '60']),
    'shard_count': (_edit(lambda manifest: _shard(manifest).update(num_examples=1)),
                    MANIFEST, ['splits.train.num_examples is 60', '46']),
    'string_count': (_edit(lambda manifest: _shard(manifest).update(num_bytes='1200')),
                     MANIFEST, ['splits.train.shards[0].num_bytes', 'whole number', '"1200"']),
    'shard_outside': (_edit(lambda manifest: _shard(manifest).update(name='../train.tfrecord')),
                      MANIFEST, ['splits.train.shards[0].name', '../train.tfrecord']),
    'encoding': (_edit(lambda manifest: manifest.update(encoding='jpeg')), MANIFEST,
                 ['encoding', 'jpeg', 'raw, png']),
    'missing_shard': (_remove_shards, 'shard', ['-00001-of-00004.tfrecord', 'missing']),
    'other_encoding': (_edit(lambda manifest: manifest.update(
        encoding={'png': 'raw', 'raw': 'png'}[manifest['encoding']])), 'shard',
        ['does not hold', 'records']),
}
MANIFEST_READERS = {
    'train': lambda records_dir, run: [
        f'--records_dir={records_dir}', f'--model_dir={run}', '--weights=none',
        '--image_size=32'],
    'evaluate': lambda records_dir, run: [f'--records_dir={records_dir}', f'--model_dir={run}'],
    'predict': lambda records_dir, run: [f'--records_dir={records_dir}', f'--model_dir={run}'],
    'convert': lambda records_dir, run: ['--verify', f'--output_dir={records_dir}'],
}


def listing(folder) -> dict[str, bytes]:
    """Every file under a folder, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob('*')) if path.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]


@pytest.mark.parametrize('script', MANIFEST_READERS)
@pytest.mark.parametrize('case', BAD_MANIFESTS)
def test_a_hand_edited_manifest_is_one_line_naming_it_and_nothing_is_written(
        sample_records, tmp_path, capsys, case, script):
    spoil, named, key_words = BAD_MANIFESTS[case]
    records_dir = tmp_path / 'records'
    shutil.copytree(sample_records, records_dir)
    spoil(records_dir)
    # A run folder as far as evaluate.py and predict.py look before the
    # records: a model file (never loaded) and no config.json.
    run = tmp_path / 'run'
    if script in ('evaluate', 'predict'):
        run.mkdir()
        (run / 'final.keras').write_bytes(b'a model')
    before = listing(tmp_path)
    assert run_script(script, *MANIFEST_READERS[script](records_dir, run)) == 1
    [error] = error_lines(capsys)
    if named == 'shard':
        assert error.startswith(f'error: shard {records_dir}/'), error
    else:
        assert error.startswith(f'error: {records_dir / named}'), error
    for words in key_words:
        assert words in error, error
    assert listing(tmp_path) == before


def test_verify_finds_counts_edited_to_add_up(sample_records, tmp_path, capsys):
    """Counts changed alike in a shard, its split and a class load fine (they
    add up); rereading the shard finds them false."""
    records_dir = tmp_path / 'records'
    shutil.copytree(sample_records, records_dir)
    path = records_dir / 'manifest.json'
    manifest = json.loads(path.read_text())
    train = manifest['splits']['train']
    shard = train['shards'][0]
    shard['num_examples'] -= 1
    train['num_examples'] -= 1
    train['class_counts']['airplane'] -= 1
    path.write_text(json.dumps(manifest))
    assert records.load_manifest(str(records_dir)).splits['train'].num_examples == 59
    assert run_script('convert', '--verify', f'--output_dir={records_dir}') == 1
    assert error_lines(capsys) == [
        f'error: shard {records_dir / shard["name"]} holds {shard["num_examples"] + 1} records, '
        f'{path} says {shard["num_examples"]}']
