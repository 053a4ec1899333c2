"""The converter, driven through scripts/convert.py's flags."""

import dataclasses
import hashlib
import io
import itertools
import os
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import py7zr
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from cifar_tfrecord import archive
from cifar_tfrecord import benchmark
from cifar_tfrecord import convert as convert_lib
from cifar_tfrecord import faults
from cifar_tfrecord import progress
from cifar_tfrecord import records
from cifar_tfrecord import sample
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig
from conftest import IMAGES_PER_CLASS, REPOSITORY, TEST_IMAGES, run_script


def convert(data_dir, output_dir, *flags):
    return run_script('convert', '--source=dir', f'--data_dir={data_dir}',
                      f'--output_dir={output_dir}', *flags)


def _pil_pixels(png: bytes) -> np.ndarray:
    """An independent decoder, to check the converter's pixels."""
    return np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))


def _tree_digest(folder) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob('*')) if path.is_file()}


@pytest.mark.parametrize('layout', ['zip', 'extracted'])
@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_pixels_labels_and_ids_round_trip_exactly(tmp_path, kaggle_zip, small_sample, monkeypatch,
                                                  encoding, layout):
    train, labels, test = small_sample
    # Batches of 24 images: several per set, none a whole number of the
    # groups PNGs are decoded in, so every boundary is crossed.
    monkeypatch.setattr(convert_lib, '_BATCH_SIZE', 24)
    data = (kaggle_zip if layout == 'zip'
            else _extracted_folder(tmp_path / 'extracted', small_sample))
    output = tmp_path / 'records'
    assert convert(data, output, f'--encoding={encoding}', '--num_shards=4') == 0

    read = {}
    for split in records.SPLITS:
        for image_id, image, label in records.read_split(str(output), split):
            read[(split, image_id)] = (image, label)
    train_ids = {image_id for split, image_id in read if split != 'test'}
    assert train_ids == set(train)
    assert {image_id for split, image_id in read if split == 'test'} == set(test)
    for (split, image_id), (image, label) in read.items():
        png = (test if split == 'test' else train)[image_id]
        np.testing.assert_array_equal(image, _pil_pixels(png))
        expected = (records.UNKNOWN_LABEL if split == 'test'
                    else records.CLASS_NAMES.index(labels[image_id]))
        assert label == expected


def test_validation_split_is_stratified_and_disjoint(tmp_path, kaggle_zip):
    output = tmp_path / 'records'
    assert convert(kaggle_zip, output, '--validation_fraction=0.5') == 0
    manifest = records.load_manifest(str(output))
    half = IMAGES_PER_CLASS // 2
    assert manifest.splits['validation'].class_counts == {name: half for name in records.CLASS_NAMES}
    assert manifest.splits['train'].class_counts == {
        name: IMAGES_PER_CLASS - half for name in records.CLASS_NAMES}
    assert manifest.splits['test'].class_counts == {'unknown': TEST_IMAGES}
    train_ids = {image_id for image_id, _, _ in records.read_split(str(output), 'train')}
    validation_ids = {image_id for image_id, _, _ in records.read_split(str(output), 'validation')}
    assert not train_ids & validation_ids


def test_records_are_shuffled_across_shards(tmp_path, kaggle_zip):
    output = tmp_path / 'records'
    assert convert(kaggle_zip, output, '--num_shards=3') == 0
    ids = [int(image_id) for image_id, _, _ in records.read_split(str(output), 'train')]
    assert ids != sorted(ids)
    manifest = records.load_manifest(str(output))
    assert [shard.name for shard in manifest.splits['train'].shards] == [
        f'train-0000{index}-of-00003.tfrecord' for index in range(3)]


@pytest.mark.slow
def test_same_input_and_flags_give_byte_identical_shards(tmp_path, kaggle_zip, small_sample):
    assert convert(kaggle_zip, tmp_path / 'first') == 0
    # The same images, as 7z files in a folder rather than a zip.
    with zipfile.ZipFile(kaggle_zip / 'cifar-10.zip') as archive:
        archive.extractall(tmp_path / 'unzipped')
    assert convert(tmp_path / 'unzipped', tmp_path / 'second') == 0
    first, second = _tree_digest(tmp_path / 'first'), _tree_digest(tmp_path / 'second')
    first.pop('manifest.json'), second.pop('manifest.json')
    assert first == second
    # Another process, with other hash seeds, writes the same bytes too.
    command = [sys.executable, os.path.join(REPOSITORY, 'scripts', 'convert.py'),
               '--source=dir', f'--data_dir={kaggle_zip}', f'--output_dir={tmp_path / "other"}']
    subprocess.run(command, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONHASHSEED='12345'))
    other = _tree_digest(tmp_path / 'other')
    other.pop('manifest.json')
    assert other == first
    assert convert(kaggle_zip, tmp_path / 'third', '--seed=5') == 0
    assert _tree_digest(tmp_path / 'third') != first


def test_image_order_in_the_source_does_not_change_the_shards(tmp_path, small_sample):
    train, labels, test = small_sample
    for name, order in (('forward', list), ('backward', reversed)):
        # The 7z archives hold the same files, their entries in opposite orders.
        (tmp_path / name).mkdir()
        sample.write_kaggle_zip(str(tmp_path / name / 'cifar-10.zip'),
                                dict(order(train.items())), sample.labels_csv(labels),
                                dict(order(test.items())))
        assert convert(tmp_path / name, tmp_path / f'{name}_records', '--num_shards=3') == 0
    forward = _tree_digest(tmp_path / 'forward_records')
    backward = _tree_digest(tmp_path / 'backward_records')
    forward.pop('manifest.json'), backward.pop('manifest.json')
    assert forward == backward
    assert (records.load_manifest(str(tmp_path / 'forward_records')).splits
            == records.load_manifest(str(tmp_path / 'backward_records')).splits)


def _id_pixel_batches(sizes: list[int]):
    """Source batches of these sizes: image n is all pixels n, label n mod 10."""
    numbers = itertools.count()
    for size in sizes:
        batch_numbers = list(itertools.islice(numbers, size))
        yield sources.SourceBatch(
            [str(number) for number in batch_numbers],
            [sample.encode_png(np.full(records.IMAGE_SHAPE, number, np.uint8))
             for number in batch_numbers],
            np.array([number % records.NUM_CLASSES for number in batch_numbers], np.int64))


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_uneven_source_batches_keep_each_image_with_its_id_and_label(monkeypatch, encoding):
    # Decoded images come out of TF two groups of 16 at a time, in chunks
    # that cut across the source's batches.
    monkeypatch.setattr(convert_lib, '_BATCH_SIZE', 2 * convert_lib._DECODE_GROUP)
    # Short batches first, in the middle and last; some cross a group's end.
    sizes = [5, 1, 40, 16, 3, 33, 17, 7, 1]
    loaded = convert_lib.load_set(_id_pixel_batches(sizes), encoding, 'train')
    parsed = records.parse_examples(tf.constant(loaded.records), encoding)
    ids = [value.decode() for value in parsed['id'].numpy()]
    assert ids == loaded.ids == [str(number) for number in range(sum(sizes))]
    for number, (image, label) in enumerate(zip(parsed['image'].numpy(), parsed['label'].numpy())):
        assert np.all(image == number), f'image {number} holds pixels {np.unique(image)}'
        assert label == loaded.labels[number] == number % records.NUM_CLASSES


def test_a_changed_extracted_image_is_converted_again(tmp_path, small_sample, capsys):
    data = _extracted_folder(tmp_path / 'data', small_sample)
    output = tmp_path / 'records'
    assert convert(data, output) == 0
    before = records.load_manifest(str(output))
    inverted = 255 - _pil_pixels(small_sample[0]['5'])
    (data / 'train' / '5.png').write_bytes(sample.encode_png(inverted))

    capsys.readouterr()
    assert convert(data, output) == 1
    assert 'already holds records made from other input' in capsys.readouterr().err
    assert convert(data, output, '--overwrite') == 0
    assert records.load_manifest(str(output)).splits != before.splits
    images = {example_id: image for split in ('train', 'validation')
              for example_id, image, _ in records.read_split(str(output), split)}
    np.testing.assert_array_equal(images['5'], inverted)


def test_rerun_is_a_no_op_and_other_flags_need_overwrite(tmp_path, kaggle_zip, capsys):
    output = tmp_path / 'records'
    assert convert(kaggle_zip, output, '--num_shards=4') == 0
    before = {name: os.stat(output / name).st_mtime_ns for name in os.listdir(output)}
    assert convert(kaggle_zip, output, '--num_shards=4') == 0
    assert {name: os.stat(output / name).st_mtime_ns for name in os.listdir(output)} == before

    capsys.readouterr()
    assert convert(kaggle_zip, output, '--num_shards=2') == 1
    assert '--overwrite' in capsys.readouterr().err
    assert {name: os.stat(output / name).st_mtime_ns for name in os.listdir(output)} == before

    assert convert(kaggle_zip, output, '--num_shards=2', '--overwrite') == 0
    assert records.verify(str(output)) == {'train': 50, 'validation': 10, 'test': 7}
    # The four-shard files of the old manifest are gone, not left as litter.
    assert sorted(os.listdir(output)) == ['manifest.json'] + sorted(
        records.shard_name(split, index, 2) for split in records.SPLITS for index in range(2))


def test_verify_flag_reports_and_catches_corruption(tmp_path, kaggle_zip, capsys):
    output = tmp_path / 'records'
    assert convert(kaggle_zip, output, '--num_shards=2') == 0
    capsys.readouterr()
    assert run_script('convert', '--verify', f'--output_dir={output}') == 0
    assert 'verified train 50 records' in capsys.readouterr().out
    shard = output / records.shard_name('validation', 1, 2)
    shard.write_bytes(shard.read_bytes()[:-10])
    assert run_script('convert', '--verify', f'--output_dir={output}') == 1
    assert records.shard_name('validation', 1, 2) in capsys.readouterr().err


def test_interrupted_write_leaves_nothing_a_reader_takes_for_data(tmp_path, kaggle_zip, monkeypatch):
    output = tmp_path / 'records'
    written = []
    original = records.write_partial_shard

    def failing_write(path, serialized):
        if len(written) == 2:
            raise OSError('disk full')
        written.append(path)
        return original(path, serialized)

    monkeypatch.setattr(records, 'write_partial_shard', failing_write)
    with pytest.raises(OSError):
        convert(kaggle_zip, output)
    assert not output.exists()


def test_png_and_raw_records_hold_the_same_images(tmp_path, kaggle_zip):
    assert convert(kaggle_zip, tmp_path / 'raw') == 0
    assert convert(kaggle_zip, tmp_path / 'png', '--encoding=png') == 0
    raw = list(records.read_split(str(tmp_path / 'raw'), 'train'))
    png = list(records.read_split(str(tmp_path / 'png'), 'train'))
    assert [example_id for example_id, _, _ in raw] == [example_id for example_id, _, _ in png]
    for (_, raw_image, raw_label), (_, png_image, png_label) in zip(raw, png):
        np.testing.assert_array_equal(raw_image, png_image)
        assert raw_label == png_label


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_grey_and_rgba_pngs_become_rgb(tmp_path, small_sample, encoding):
    train, labels, _ = small_sample
    train = dict(train)
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32, 1)
    rgba = np.dstack([sample.draw_image(0, np.random.default_rng(0)),
                      np.full((32, 32, 1), 128, np.uint8)])
    train['1'] = tf.io.encode_png(grey).numpy()
    train['2'] = tf.io.encode_png(rgba).numpy()
    data = tmp_path / 'data'
    data.mkdir()
    sample.write_kaggle_zip(str(data / 'cifar-10.zip'), train, sample.labels_csv(labels))
    assert convert(data, tmp_path / 'records', f'--encoding={encoding}') == 0
    images = {image_id: image for split in ('train', 'validation')
              for image_id, image, _ in records.read_split(str(tmp_path / 'records'), split)}
    np.testing.assert_array_equal(images['1'], np.repeat(grey, 3, axis=2))
    np.testing.assert_array_equal(images['2'], rgba[..., :3])


def test_source_sample_converts_offline(tmp_path):
    output = tmp_path / 'records'
    assert run_script('convert', '--source=sample', f'--output_dir={output}',
                      '--sample_images_per_class=5', '--sample_test_images=3') == 0
    manifest = records.load_manifest(str(output))
    assert manifest.provenance['source']['kind'] == 'sample'
    assert {name: split.num_examples for name, split in manifest.splits.items()} == {
        'train': 40, 'validation': 10, 'test': 3}


def test_source_tfds_converts_with_a_labelled_test_split(tmp_path):
    import tensorflow_datasets as tfds
    output = tmp_path / 'records'
    with tfds.testing.mock_data(num_examples=30):
        assert run_script('convert', '--source=tfds', f'--output_dir={output}',
                          f'--tfds_data_dir={tmp_path / "tfds"}', '--encoding=png',
                          '--validation_fraction=0.3') == 0
    test_labels = [label for _, _, label in records.read_split(str(output), 'test')]
    assert len(test_labels) == 30 and all(0 <= label < 10 for label in test_labels)


def test_script_runs_as_a_command(tmp_path):
    """The real command line: exit status and the one-line error."""
    command = [sys.executable, os.path.join(REPOSITORY, 'scripts', 'convert.py'),
               '--source=dir', f'--data_dir={tmp_path / "missing"}',
               f'--output_dir={tmp_path / "records"}']
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: data folder {tmp_path / "missing"} does not exist')
    assert not (tmp_path / 'records').exists()


# ----------------------------------------------------------------------------
# Bad input: a one-line error naming the culprit, exit 1, no output, and the
# source untouched.


def _bad_zip(folder, small_sample, *, train=None, labels_csv=None, test=None, raw_7z=None):
    original_train, labels, original_test = small_sample
    train = dict(original_train) if train is None else train
    csv_text = sample.labels_csv(labels) if labels_csv is None else labels_csv
    folder.mkdir()
    zip_path = folder / 'cifar-10.zip'
    sample.write_kaggle_zip(str(zip_path), train, csv_text,
                            original_test if test is None else test)
    if raw_7z is not None:  # Replace train.7z by hand-made archive bytes.
        with zipfile.ZipFile(zip_path, 'w') as archive:
            archive.writestr('train.7z', raw_7z)
            archive.writestr(sources.LABELS_CSV, csv_text)
    return folder


def _evil_7z(train: dict, evil_name: str) -> bytes:
    buffer = io.BytesIO()
    with py7zr.SevenZipFile(buffer, 'w') as archive:
        for image_id, png in train.items():
            archive.writestr(png, f'train/{image_id}.png')
        # py7zr refuses to write such a name; its private writer does not check.
        archive._writestr(b'evil', evil_name)
    return buffer.getvalue()


def _cases(small_sample):
    train, labels, _ = small_sample
    truncated = dict(train, **{'5': train['5'][:60]})
    not_png = dict(train, **{'6': b'GIF89a' + train['6'][6:]})
    big = dict(train, **{'7': tf.io.encode_png(np.zeros((40, 40, 3), np.uint8)).numpy()})
    missing_image = {key: value for key, value in train.items() if key != '8'}
    extra_image = dict(train, **{'999': train['1']})
    duplicate_entry = dict(train, **{'train/sub/3.png': train['3']})
    csv = sample.labels_csv(labels)
    return {
        'undecodable png': (dict(train=truncated), r'image 5\.png does not decode'),
        'not a png': (dict(train=not_png), r'image 6\.png is not a PNG'),
        'wrong size': (dict(train=big), 'image 7 is 40x40 pixels, not 32x32'),
        'csv id without image': (dict(train=missing_image), 'id 8 has no image'),
        'image without csv row': (dict(train=extra_image), r'image 999\.png has no row'),
        'duplicate csv id': (dict(labels_csv=csv + '4,cat\n'), 'duplicate id 4'),
        'duplicate archive id': (dict(train=duplicate_entry), 'duplicate id 3'),
        'label outside the classes': (
            dict(labels_csv=csv.replace('\n9,', '\n9,unicorn_', 1)), "id 9 has label 'unicorn_"),
        # The issue's: a spreadsheet's habits, refused in one clear line.
        'capitalized label': (
            dict(labels_csv=csv.replace(f'\n9,{labels["9"]}\n', f'\n9,{labels["9"].title()}\n')),
            f"id 9 has label '{labels['9'].title()}', which is not one of the ten CIFAR-10 "
            'classes'),
        'id with leading zeros': (
            dict(labels_csv=csv.replace('\n7,', '\n007,', 1)),
            r'image 7\.png has no row in trainLabels\.csv'),
        'entry escaping the folder': (
            dict(raw_7z=_evil_7z(train, '../evil.png')), "entry '../evil.png' escapes"),
        'absolute entry': (
            dict(raw_7z=_evil_7z(train, '/tmp/evil.png')), "entry '/tmp/evil.png' escapes"),
    }


CASE_NAMES = ['undecodable png', 'not a png', 'wrong size', 'csv id without image',
              'image without csv row', 'duplicate csv id', 'duplicate archive id',
              'label outside the classes', 'capitalized label', 'id with leading zeros',
              'entry escaping the folder', 'absolute entry']


def _extracted_folder(folder, small_sample, *, train=None, labels_csv=None):
    """Kaggle's files as a user who unpacked them holds them."""
    original_train, labels, test = small_sample
    for name, files in (('train', original_train if train is None else train), ('test', test)):
        (folder / name).mkdir(parents=True)
        for image_id, png in files.items():
            (folder / name / f'{image_id}.png').write_bytes(png)
    (folder / sources.LABELS_CSV).write_text(
        sample.labels_csv(labels) if labels_csv is None else labels_csv)
    return folder


# An extracted folder can hold the cases that are not about archives; its
# images are read another way (from files), so both are tested.
EXTRACTED_CASE_NAMES = ['undecodable png', 'not a png', 'wrong size', 'csv id without image',
                        'image without csv row', 'duplicate csv id', 'label outside the classes',
                        'capitalized label', 'id with leading zeros']


@pytest.mark.parametrize('layout, case', [('zip', name) for name in CASE_NAMES]
                         + [('extracted', name) for name in EXTRACTED_CASE_NAMES])
def test_bad_input_is_refused_cleanly(tmp_path, small_sample, capsys, layout, case):
    arguments, message = _cases(small_sample)[case]
    make_data = _bad_zip if layout == 'zip' else _extracted_folder
    data = make_data(tmp_path / 'data', small_sample, **arguments)
    source_before = _tree_digest(data)
    output = tmp_path / 'records'
    capsys.readouterr()
    assert convert(data, output) == 1
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines[-1].startswith('error: ')
    assert pytest.importorskip('re').search(message, error_lines[-1]), error_lines[-1]
    assert not output.exists()
    assert _tree_digest(data) == source_before


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_unreadable_extracted_file_is_named(tmp_path, small_sample, capsys, encoding):
    data = _extracted_folder(tmp_path / 'data', small_sample)
    (data / 'train' / '5.png').unlink()
    (data / 'train' / '5.png').symlink_to(tmp_path / 'nowhere.png')  # Dangling.
    capsys.readouterr()
    assert convert(data, tmp_path / 'records', f'--encoding={encoding}') == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == (f'error: cannot read {data / "train" / "5.png"}: '
                         'No such file or directory')
    assert not (tmp_path / 'records').exists()


def _flip_last_data_byte(png: bytes) -> bytes:
    # The byte before IEND's 12 bytes and IDAT's 4-byte CRC: compressed pixels.
    position = len(png) - 12 - 4 - 1
    return png[:position] + bytes([png[position] ^ 0xFF]) + png[position + 1:]


@pytest.mark.parametrize('case, message', [
    ('truncated', r'image 5\.png is a broken PNG \(.* past the end'),
    ('flipped byte', r"image 5\.png is a broken PNG \(b'IDAT' chunk fails its CRC check"),
    ('wrong size', 'image 5 is 40x40 pixels, not 32x32'),
    ('not a png', r'image 5\.png is not a PNG'),
])
def test_png_encoding_checks_each_file_without_decoding(tmp_path, small_sample, capsys,
                                                         case, message):
    train = dict(small_sample[0])
    train['5'] = {
        'truncated': train['5'][:60],
        'flipped byte': _flip_last_data_byte(train['5']),
        'wrong size': tf.io.encode_png(np.zeros((40, 40, 3), np.uint8)).numpy(),
        'not a png': b'GIF89a' + train['5'][6:],
    }[case]
    data = _bad_zip(tmp_path / 'data', small_sample, train=train)
    capsys.readouterr()
    assert convert(data, tmp_path / 'records', '--encoding=png') == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert pytest.importorskip('re').search(message, last_line), last_line
    assert not (tmp_path / 'records').exists()


@pytest.mark.parametrize('encoding', records.ENCODINGS)
def test_png_larger_than_one_read_converts_whole(tmp_path, small_sample, encoding):
    """A valid PNG with a large text chunk: more bytes than one read of a file."""
    train = dict(small_sample[0])
    pixels = _pil_pixels(train['5'])
    comment = PngImagePlugin.PngInfo()
    comment.add_text('comment', 'x' * (3 * sources._READ_SIZE))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='PNG', pnginfo=comment)
    assert len(buffer.getvalue()) > 3 * sources._READ_SIZE
    train['5'] = buffer.getvalue()
    data = _extracted_folder(tmp_path / 'data', small_sample, train=train)
    assert convert(data, tmp_path / 'records', f'--encoding={encoding}') == 0
    images = {example_id: image for split in ('train', 'validation')
              for example_id, image, _ in records.read_split(str(tmp_path / 'records'), split)}
    np.testing.assert_array_equal(images['5'], pixels)


@pytest.mark.parametrize('shape', [(32, 32, 3), (20, 30, 1), (32, 32, 4), (7, 5, 2)])
def test_png_size_reads_the_header_of_any_png(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    png = tf.io.encode_png(image).numpy()
    assert convert_lib.png_size(png) == shape[:2]
    with pytest.raises(ValueError, match='ends before its IEND'):
        convert_lib.png_size(png[:-12])


def test_bad_input_leaves_existing_records_untouched(tmp_path, kaggle_zip, small_sample, capsys):
    output = tmp_path / 'records'
    assert convert(kaggle_zip, output) == 0
    before = _tree_digest(output)
    arguments, _ = _cases(small_sample)['undecodable png']
    data = _bad_zip(tmp_path / 'bad', small_sample, **arguments)
    assert convert(data, output, '--overwrite') == 1
    assert _tree_digest(output) == before


def test_escaping_zip_member_is_refused(tmp_path, kaggle_zip, capsys):
    with zipfile.ZipFile(kaggle_zip / 'cifar-10.zip', 'a') as archive:
        archive.writestr('../outside.txt', 'x')
    assert convert(kaggle_zip, tmp_path / 'records') == 1
    assert "entry '../outside.txt' escapes" in capsys.readouterr().err


@pytest.mark.parametrize('flag, message', [
    ('--encoding=jpeg', '--encoding=jpeg'),
    ('--validation_fraction=1.5', '--validation_fraction=1.5'),
    ('--num_shards=0', '--num_shards=0'),
])
def test_bad_flags_are_refused(tmp_path, kaggle_zip, capsys, flag, message):
    assert convert(kaggle_zip, tmp_path / 'records', flag) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'records').exists()


def test_empty_data_folder_is_refused(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert convert(tmp_path / 'empty', tmp_path / 'records') == 1
    assert f'data folder {tmp_path / "empty"} is empty' in capsys.readouterr().err


def test_missing_kaggle_credentials_via_the_flag(tmp_path, monkeypatch, capsys):
    for name in ('KAGGLE_USERNAME', 'KAGGLE_KEY', 'KAGGLE_API_TOKEN'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('KAGGLE_CONFIG_DIR', str(tmp_path / 'nothing'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert run_script('convert', '--source=kaggle', f'--download_dir={tmp_path / "dl"}',
                      f'--output_dir={tmp_path / "records"}') == 1
    assert 'no Kaggle credentials found' in capsys.readouterr().err
    assert not (tmp_path / 'records').exists()


# ----------------------------------------------------------------------------
# Hostile input: a decompression bomb, input over a limit, a CSV that is not
# UTF-8, a 7z process that dies. Each is one line naming the file, exit
# status 1, no output and no temporary file, and the input as it was.

# The bomb: train/7.png of 2 GB of zeros, about 300 KB compressed.
_BOMB_BYTES = 2 << 30
# The converting process and its 7z process peak under this while refusing
# the bomb: here 0.6 to 0.7 GB, what importing TensorFlow alone takes
# (README, "Hostile input"). Half the bomb: a converter that decompressed it
# could not stay under.
_BOMB_MEMORY_BOUND = _BOMB_BYTES // 2


@pytest.fixture(scope='module')
def bomb_data(tmp_path_factory, small_sample):
    """A folder holding a cifar-10.zip whose train.7z holds train/7.png of
    _BOMB_BYTES zeros beside the sample's other PNGs; every id has a row."""
    train, labels, test = small_sample
    folder = tmp_path_factory.mktemp('bomb')
    zeros = folder / 'zeros'
    with open(zeros, 'wb') as file:
        file.truncate(_BOMB_BYTES)  # Sparse: no disk space, read fast.
    seven_zip = folder / 'train.7z'
    # LZMA2's fastest preset compresses zeros as well as its best, in a third of the time.
    with py7zr.SevenZipFile(seven_zip, 'w',
                            filters=[{'id': py7zr.FILTER_LZMA2, 'preset': 0}]) as archive:
        for image_id, png in train.items():
            if image_id != '7':
                archive.writestr(png, f'train/{image_id}.png')
        archive.write(zeros, 'train/7.png')
    zeros.unlink()
    data = folder / 'data'
    data.mkdir()
    with zipfile.ZipFile(data / 'cifar-10.zip', 'w') as outer:
        outer.write(seven_zip, 'train.7z')
        outer.writestr(sources.LABELS_CSV, sample.labels_csv(labels))
        outer.writestr('test.7z', sample.make_7z(test, 'test'))
    seven_zip.unlink()
    return data


@pytest.mark.slow
def test_decompression_bomb_is_refused_before_decompressing(bomb_data, tmp_path):
    with zipfile.ZipFile(bomb_data / 'cifar-10.zip') as outer, \
            py7zr.SevenZipFile(outer.open('train.7z')) as seven_zip:
        declared = {entry.filename: entry.uncompressed for entry in seven_zip.list()}
    assert declared['train/7.png'] == _BOMB_BYTES
    source_before = _tree_digest(bomb_data)
    output, temporary = tmp_path / 'records', tmp_path / 'temporary'
    temporary.mkdir()
    # The converter and its 7z process: the largest peak of the two.
    run = benchmark.run_measuring_memory(
        [sys.executable, os.path.join(REPOSITORY, 'scripts', 'convert.py'), '--source=dir',
         f'--data_dir={bomb_data}', f'--output_dir={output}'],
        env=dict(os.environ, TMPDIR=str(temporary)))
    assert run.status == 1, run.stderr[-2000:]
    assert 'Traceback' not in run.stderr
    # The declared size, and the limit: refused on the header, before any decompression.
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {bomb_data / 'train.7z'}: entry 'train/7.png' declares 2,147,483,648 bytes, "
        f'more than the {sources.MAX_IMAGE_BYTES:,} a 32x32 PNG may take')
    assert not output.exists()
    assert not os.listdir(temporary)
    assert _tree_digest(bomb_data) == source_before
    assert run.peak_resident_bytes < _BOMB_MEMORY_BOUND, (
        f'the converter peaked at {run.peak_resident_bytes:,} bytes')
    # For the README's figure: pytest -rA shows it.
    print(f'refusing the bomb, the converter peaked at {run.peak_resident_bytes >> 20:,} MB '
          'of resident memory')


def _latin1_labels(labels: dict, encoding: str) -> tuple[bytes, int, int]:
    """trainLabels.csv as a spreadsheet saves it in `encoding`, with 'Café'
    in an extra column of one row: (the file, that row's line, the byte of é
    in that line, counted from 1)."""
    lines = sample.labels_csv(labels).splitlines()
    line_number = 4
    lines[line_number - 1] += ',Café'
    byte = len(lines[line_number - 1])  # é ends the line, and takes one byte.
    return ('\r\n'.join(lines) + '\r\n').encode(encoding), line_number, byte


def _write_kaggle_zip_with_csv(zip_path, small_sample, csv_bytes: bytes) -> None:
    train, _, test = small_sample
    with zipfile.ZipFile(zip_path, 'w') as outer:
        outer.writestr('train.7z', sample.make_7z(train, 'train'))
        outer.writestr(sources.LABELS_CSV, csv_bytes)
        outer.writestr('test.7z', sample.make_7z(test, 'test'))


@pytest.mark.parametrize('layout', ['zip', 'extracted'])
@pytest.mark.parametrize('encoding', ['latin-1', 'cp1252'])
def test_labels_csv_not_in_utf8_is_one_line_naming_line_and_byte(tmp_path, small_sample, capsys,
                                                                  layout, encoding):
    csv_bytes, line, byte = _latin1_labels(small_sample[1], encoding)
    data = tmp_path / 'data'
    if layout == 'zip':
        data.mkdir()
        _write_kaggle_zip_with_csv(data / 'cifar-10.zip', small_sample, csv_bytes)
    else:
        _extracted_folder(data, small_sample)
        (data / sources.LABELS_CSV).write_bytes(csv_bytes)
    source_before = _tree_digest(data)
    capsys.readouterr()
    assert convert(data, tmp_path / 'records') == 1
    errors = capsys.readouterr().err
    assert 'Traceback' not in errors
    assert errors.strip().splitlines()[-1] == (
        f'error: {data / sources.LABELS_CSV}: line {line}, byte {byte} (0xe9) is not UTF-8; '
        'save the file as UTF-8 (a spreadsheet\'s "CSV UTF-8")')
    assert not (tmp_path / 'records').exists()
    assert _tree_digest(data) == source_before


def _zip_of_extracted_pngs(folder, small_sample):
    """A zip holding train/<id>.png and the CSV, as a user may re-zip them."""
    train, labels, _ = small_sample
    folder.mkdir()
    with zipfile.ZipFile(folder / 'cifar-10.zip', 'w') as outer:
        for image_id, png in train.items():
            outer.writestr(f'train/{image_id}.png', png)
        outer.writestr(sources.LABELS_CSV, sample.labels_csv(labels))
    return folder


def _over_limit_cases(data) -> dict:
    """name: (layout, {limit: small value}, the error line after 'error: ')."""
    zip_path = re.escape(str(data / 'cifar-10.zip'))
    train_7z = re.escape(str(data / 'train.7z'))
    small_archive_limits = dataclasses.replace(sources._ARCHIVE_LIMITS, entries=5)
    return {
        'csv over its size, in a zip': (
            'zip', {'MAX_LABELS_BYTES': 50},
            rf'{zip_path}: trainLabels.csv takes [\d,]+ bytes, more than the 50 this file may '
            'take'),
        'csv over its size, in a folder': (
            'extracted', {'MAX_LABELS_BYTES': 50},
            rf'{re.escape(str(data / sources.LABELS_CSV))} takes [\d,]+ bytes, more than the 50 '
            'this file may take'),
        'csv over its rows': (
            'zip', {'MAX_IMAGES': 5},
            rf'{re.escape(str(data / sources.LABELS_CSV))}: more than 5 rows, the most a set '
            'may have'),
        'zip over its entries': (
            'zip', {'MAX_ZIP_ENTRIES': 3},
            rf'{zip_path} holds 4 entries, more than the 3 a Kaggle layout may have'),
        '7z archive in the zip over its size': (
            'zip', {'MAX_SET_BYTES': 1000},
            rf"{train_7z} takes [\d,]+ bytes, more than the 1,000 a set's 7z archive may take"),
        '7z archive over its entries': (
            'zip', {'_ARCHIVE_LIMITS': small_archive_limits},
            rf'{train_7z}: it holds {IMAGES_PER_CLASS * 10} entries, more than the 5 a set '
            'may have'),
        'png in the zip over its size': (
            'zipped pngs', {'MAX_IMAGE_BYTES': 100},
            rf'{zip_path}: train/\d+\.png takes [\d,]+ bytes, more than the 100 this file may '
            'take'),
    }


@pytest.mark.parametrize('case', ['csv over its size, in a zip', 'csv over its size, in a folder',
                                  'csv over its rows', 'zip over its entries',
                                  '7z archive in the zip over its size',
                                  '7z archive over its entries', 'png in the zip over its size'])
def test_input_over_a_limit_is_refused_in_one_line(tmp_path, small_sample, capsys, monkeypatch,
                                                   case):
    """Each limit of sources.py, made small here: the real ones need inputs
    of gigabytes or of a million entries."""
    data = tmp_path / 'data'
    layout, limits, message = _over_limit_cases(data)[case]
    if layout == 'zip':
        _bad_zip(data, small_sample)
    elif layout == 'extracted':
        _extracted_folder(data, small_sample)
    else:
        _zip_of_extracted_pngs(data, small_sample)
    for name, value in limits.items():
        monkeypatch.setattr(sources, name, value)
    source_before = _tree_digest(data)
    capsys.readouterr()
    assert convert(data, tmp_path / 'records') == 1
    errors = capsys.readouterr().err
    assert 'Traceback' not in errors
    assert re.fullmatch(f'error: {message}', errors.strip().splitlines()[-1]), errors[-500:]
    assert not (tmp_path / 'records').exists()
    assert _tree_digest(data) == source_before


@pytest.mark.parametrize('code, message', [
    ('import sys; print("Segmentation fault", file=sys.stderr); sys.exit(139)',
     'the 7z process died (exit status 139): Segmentation fault'),
    ('import os, sys; os.write(int(sys.argv[1]), b"\\xc8\\0\\0\\0\\x05hello")',
     'the 7z process sent garbage (a frame of kind 200 and 5 bytes)'),
], ids=['dies', 'garbage'])
def test_a_7z_process_that_dies_or_sends_garbage_is_one_line(kaggle_zip, tmp_path, capsys,
                                                            monkeypatch, code, message):
    monkeypatch.setattr(archive, '_child_command', lambda path, member, frames_descriptor, limits:
                        [sys.executable, '-c', code, str(frames_descriptor)])
    capsys.readouterr()
    assert convert(kaggle_zip, tmp_path / 'records') == 1
    errors = capsys.readouterr().err
    assert 'Traceback' not in errors
    assert errors.strip().splitlines()[-1] == f'error: {kaggle_zip / "train.7z"}: {message}'
    assert not (tmp_path / 'records').exists()


# ----------------------------------------------------------------------------
# Killed for real: SIGKILL at chosen points of the writing, then a rerun.

# (point, visit, seed) of each kill, in turn, on one records folder. Seed 0
# writes 16 shards per split, seed 1 writes 12.
_KILLS = (
    # A first conversion's first shard, under its temporary name.
    ('shard_written', 1, 0),
    # A whole conversion, before it removes the temporary file left above.
    ('manifest_published', 1, 1),
    # A conversion replacing that one: its manifest went first, then shards
    # were published up to the second of validation's.
    ('shard_published', 18, 0),
    # The manifest written under its temporary name, not renamed.
    ('manifest_written', 1, 1),
)


def _check_no_reader_sees_a_partial_conversion(output_dir):
    """Either no manifest, so no reader finds any shard, or whole records.

    Returns:
        The verified records per split, or None without a manifest.
    """
    names = set(os.listdir(output_dir)) if os.path.isdir(output_dir) else set()
    if records.MANIFEST_NAME not in names:
        return None
    counts = records.verify(output_dir)  # Every listed shard whole: size, checksum, count.
    manifest = records.load_manifest(output_dir)
    listed = {shard.name for split in manifest.splits.values() for shard in split.shards}
    published = {name for name in names if name.endswith('.tfrecord')}
    assert published <= listed, f'shards outside the manifest: {sorted(published - listed)}'
    return counts


@pytest.mark.slow
def test_killed_conversions_leave_only_whole_records_and_a_rerun_completes(tmp_path):
    output_dir = tmp_path / 'records'
    whole = {'train': 900, 'validation': 100, 'test': 100}

    def flags(seed):
        # --overwrite with another seed and shard count: every run replaces
        # the records before, and leaves stale shards if it fails to clean.
        return ['--source=sample', f'--output_dir={output_dir}', f'--num_shards={16 - 4 * seed}',
                '--sample_images_per_class=100', '--sample_test_images=100',
                f'--seed={seed}', '--overwrite']

    for point, visit, seed in _KILLS:
        killed = subprocess.run(
            [sys.executable, os.path.join(REPOSITORY, 'scripts', 'convert.py'), *flags(seed)],
            capture_output=True, text=True, env=dict(os.environ, **faults.kill_at(point, visit)))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert f'{faults.KILLED_MESSAGE} {point}:{visit}' in killed.stderr.splitlines()
        counts = _check_no_reader_sees_a_partial_conversion(str(output_dir))
        assert counts == (whole if point == 'manifest_published' else None), point
        if point == 'shard_published':
            assert any(name.endswith('-of-00016.tfrecord') for name in os.listdir(output_dir))

    # The rerun, in this process: one TensorFlow start-up fewer.
    assert run_script('convert', *flags(1)) == 0
    assert _check_no_reader_sees_a_partial_conversion(str(output_dir)) == whole
    manifest = records.load_manifest(str(output_dir))
    assert manifest.provenance['options']['seed'] == 1
    listed = {shard.name for split in manifest.splits.values() for shard in split.shards}
    assert set(os.listdir(output_dir)) == listed | {records.MANIFEST_NAME}


@pytest.mark.slow
def test_ctrl_c_while_decompressing_prints_one_line_and_keeps_the_records(kaggle_zip, tmp_path):
    output_dir = tmp_path / 'records'
    assert run_script('convert', '--source=dir', f'--data_dir={kaggle_zip}',
                      f'--output_dir={output_dir}', '--num_shards=2') == 0
    before = {path.name: path.read_bytes() for path in output_dir.iterdir()}
    # Ctrl-C reaches the converter and its 7z process alike, as in a terminal.
    interrupted = subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, 'scripts', 'convert.py'), '--source=dir',
         f'--data_dir={kaggle_zip}', f'--output_dir={output_dir}', '--num_shards=3',
         '--overwrite'],
        capture_output=True, text=True, start_new_session=True,
        env=dict(os.environ, **faults.kill_at('archive_batch', 1, signal_name='SIGINT')))
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    lines = interrupted.stderr.splitlines()
    assert lines[-2:] == [f'{faults.KILLED_MESSAGE} archive_batch:1',
                          'interrupted: nothing was written, and records already there are as '
                          'they were; rerun the same command to convert']
    assert 'Traceback' not in interrupted.stderr + interrupted.stdout
    assert {path.name: path.read_bytes() for path in output_dir.iterdir()} == before


@pytest.mark.parametrize('extracted', [False, True])
def test_progress_counts_each_set_against_its_size(kaggle_zip, tmp_path, monkeypatch, caplog,
                                                    extracted):
    if extracted:  # train/ and test/ folders beside the CSV, instead of 7z archives.
        data_dir = tmp_path / 'extracted'
        with zipfile.ZipFile(kaggle_zip / 'cifar-10.zip') as outer:
            outer.extractall(data_dir)
        for name in ('train', 'test'):
            with py7zr.SevenZipFile(data_dir / f'{name}.7z') as archive:
                archive.extractall(data_dir)
            (data_dir / f'{name}.7z').unlink()
    else:
        data_dir = kaggle_zip
    monkeypatch.setattr(progress, 'PROGRESS_SECONDS', 0.0)  # A line for every batch.
    with caplog.at_level('INFO', logger='absl'):
        convert_lib.convert(ConvertConfig(source='dir', data_dir=str(data_dir),
                                          output_dir=str(tmp_path / 'records'), num_shards=2))
    lines = [record.getMessage() for record in caplog.records]
    for kaggle_set, total in (('train', IMAGES_PER_CLASS * 10), ('test', TEST_IMAGES)):
        assert any(line.startswith(f'{kaggle_set}: {total:,} of {total:,} images (100%), ')
                   for line in lines), lines
        assert any(line.startswith(f'{kaggle_set}: {total:,} images in ') for line in lines)
