"""Sources: Kaggle's layouts, the Kaggle download, tensorflow-datasets."""

import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import requests
import tensorflow as tf

from cifar_tfrecord import records
from cifar_tfrecord import sample
from cifar_tfrecord import sources
from cifar_tfrecord.errors import UserInputError


def _examples(source, kaggle_set, batch_size=5):
    """{id: (image, label)} of a set, checking that batches are columns of one length."""
    examples = {}
    for batch in source.batches(kaggle_set, batch_size):
        assert 0 < len(batch.ids) == len(batch.images) == len(batch.labels) <= batch_size
        examples.update((image_id, (image, int(label))) for image_id, image, label
                        in zip(batch.ids, batch.images, batch.labels))
    assert examples
    return examples


def test_zip_7z_folder_and_extracted_pngs_give_the_same_examples(tmp_path, kaggle_zip, small_sample):
    train, labels, test = small_sample
    with zipfile.ZipFile(kaggle_zip / 'cifar-10.zip') as archive:
        archive.extractall(tmp_path / 'sevenzip')
    extracted = _extracted(tmp_path / 'extracted', small_sample)

    expected_train = {image_id: (png, records.CLASS_NAMES.index(labels[image_id]))
                      for image_id, png in train.items()}
    expected_test = {image_id: (png, records.UNKNOWN_LABEL) for image_id, png in test.items()}
    for path in (kaggle_zip, kaggle_zip / 'cifar-10.zip', tmp_path / 'sevenzip', extracted):
        layout = sources.KaggleLayout(str(path))
        assert layout.sets == ('train', 'test')
        for kaggle_set, expected in (('train', expected_train), ('test', expected_test)):
            assert _examples(layout, kaggle_set) == expected


def _extracted(folder, small_sample):
    train, labels, test = small_sample
    for name, files in (('train', train), ('test', test)):
        (folder / name).mkdir(parents=True)
        for image_id, png in files.items():
            (folder / name / f'{image_id}.png').write_bytes(png)
    (folder / sources.LABELS_CSV).write_text(sample.labels_csv(labels))
    return folder


# Run by `python -c` with a Kaggle zip's folder: a script's steps before TensorFlow loads.
_STARTED_BEFORE_TENSORFLOW = """
    import sys
    from cifar_tfrecord import sources
    from cifar_tfrecord.config import ConvertConfig
    source = sources.make_source(ConvertConfig(source='dir', data_dir=sys.argv[1]))
    assert 'tensorflow' not in sys.modules, 'TensorFlow loaded before the archives started'
    started = {kaggle_set: stream.gi_frame.f_locals['child'].poll()
               for kaggle_set, stream in source._streams.items()}
    assert started == {'train': None, 'test': None}, started  # Each child running.
    print(sum(len(batch.ids) for kaggle_set in source.sets
              for batch in source.batches(kaggle_set, 7)))
"""


def test_the_archives_decompress_before_tensorflow_loads(kaggle_zip, small_sample):
    finished = subprocess.run([sys.executable, '-c', textwrap.dedent(_STARTED_BEFORE_TENSORFLOW),
                               str(kaggle_zip)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    train, _, test = small_sample
    assert int(finished.stdout) == len(train) + len(test)


@pytest.mark.parametrize('change', ['modification time', 'size'])
def test_fingerprint_sees_any_extracted_file_change(tmp_path, small_sample, change):
    data = _extracted(tmp_path / 'data', small_sample)
    before = sources.KaggleLayout(str(data)).fingerprint()
    assert sources.KaggleLayout(str(data)).fingerprint() == before
    image = data / 'test' / '3.png'
    stat = image.stat()
    if change == 'size':
        # The same modification time, and the folder's own entries unchanged.
        image.write_bytes(image.read_bytes() + b'\0')
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert sources.KaggleLayout(str(data)).fingerprint() != before


def test_fingerprint_of_extracted_images_stays_small(tmp_path, small_sample):
    data = _extracted(tmp_path / 'data', small_sample)
    files = sources.KaggleLayout(str(data)).fingerprint()['files']
    # One entry per subfolder, however many images it holds.
    assert [entry[:2] for entry in files] == [
        ['test/', len(small_sample[2])], ['train/', len(small_sample[0])],
        [sources.LABELS_CSV, (data / sources.LABELS_CSV).stat().st_size]]


def test_extracted_files_are_read_in_name_order(tmp_path, small_sample, monkeypatch):
    data = _extracted(tmp_path / 'data', small_sample)
    listdir = tf.io.gfile.listdir
    # Whatever order the file system lists them in.
    monkeypatch.setattr(tf.io.gfile, 'listdir', lambda path: sorted(listdir(path), reverse=True))
    for kaggle_set in sources.KAGGLE_SETS:
        ids = [image_id for batch in sources.KaggleLayout(str(data)).batches(kaggle_set, 4)
               for image_id in batch.ids]
        assert ids == sorted(ids) and len(ids) > 1


@pytest.mark.parametrize('text, message', [
    ('id,label\n1,cat\n1,dog\n', 'duplicate id 1'),
    ('id,label\n1,cat\n2,unicorn\n', "id 2 has label 'unicorn'"),
    ('name,class\n1,cat\n', 'header'),
    ('id,label\n', 'no labels'),
])
def test_read_labels_refuses_bad_csv(text, message):
    with pytest.raises(UserInputError, match=message):
        sources.read_labels(text.encode(), 'trainLabels.csv')


def test_read_labels_reads_a_spreadsheets_utf8():
    """The issue's cases to keep: a byte order mark, CRLF, spaces after
    commas; and quoted fields."""
    data = '\ufeffid,label\r\n1, cat\r\n"2","dog"\r\n3 , frog\r\n'.encode()
    assert sources.read_labels(data, 'x') == {'1': 3, '2': 5, '3': 6}


@pytest.mark.parametrize('encoding', ['latin-1', 'cp1252'])
def test_read_labels_names_the_line_and_byte_that_is_not_utf8(encoding):
    data = 'id,label\n1,cat\n2,dog,Café\n'.encode(encoding)
    with pytest.raises(UserInputError) as error:
        sources.read_labels(data, 'data/trainLabels.csv')
    assert str(error.value) == ('data/trainLabels.csv: line 3, byte 10 (0xe9) is not UTF-8; '
                                'save the file as UTF-8 (a spreadsheet\'s "CSV UTF-8")')


def test_read_labels_maps_names_to_cifar_order():
    labels = sources.read_labels(b'id,label\n1,airplane\n2,truck\n3,cat\n', 'x')
    assert labels == {'1': 0, '2': 9, '3': 3}


@pytest.mark.parametrize('name', ['../evil.png', 'train/../../evil.png', '/etc/evil.png',
                                  'C:/evil.png', '..\\evil.png'])
def test_escaping_entry_names_are_refused(name):
    with pytest.raises(UserInputError, match='escapes'):
        sources.check_member_name(name, 'train.7z')


def test_ordinary_entry_names_pass():
    sources.check_member_name('train/12.png', 'train.7z')


def test_ids_sort_as_numbers():
    assert sorted(['10', '2', '1', 'b', 'a'], key=sources.id_sort_key) == ['1', '2', '10', 'a', 'b']


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserInputError, match=f'{tmp_path / "nowhere"} does not exist'):
        sources.KaggleLayout(str(tmp_path / 'nowhere'))


def test_empty_data_folder(tmp_path):
    with pytest.raises(UserInputError, match=f'{tmp_path} is empty'):
        sources.KaggleLayout(str(tmp_path))


def test_a_data_folder_without_cifar_says_what_it_lacks(tmp_path):
    (tmp_path / 'notes.txt').write_text('not CIFAR-10')
    with pytest.raises(UserInputError) as error:
        sources.KaggleLayout(str(tmp_path))
    assert str(error.value) == (f'data folder {tmp_path} holds neither cifar-10.zip, nor '
                                'train.7z, nor train/ with trainLabels.csv')


def test_a_zip_without_cifar_says_what_it_lacks(tmp_path):
    with zipfile.ZipFile(tmp_path / 'cifar-10.zip', 'w') as archive:
        archive.writestr('notes.txt', 'not CIFAR-10')
    with pytest.raises(UserInputError) as error:
        sources.KaggleLayout(str(tmp_path))
    assert str(error.value) == (f'{tmp_path / "cifar-10.zip"} holds neither train.7z nor train/ '
                                'with trainLabels.csv')


@pytest.mark.parametrize('images', ['train.7z', 'train/'])
def test_images_without_labels_are_named(tmp_path, images):
    if images == 'train/':
        (tmp_path / 'train').mkdir()
    else:
        (tmp_path / images).write_bytes(b'')
    with pytest.raises(UserInputError) as error:
        sources.KaggleLayout(str(tmp_path))
    assert str(error.value) == f'{tmp_path}: trainLabels.csv not found beside {images}'


def test_corrupt_7z_is_named(tmp_path):
    (tmp_path / 'train.7z').write_bytes(b'7z\xbc\xaf\x27\x1c' + b'\x00' * 100)
    (tmp_path / sources.LABELS_CSV).write_text('id,label\n1,cat\n')
    with pytest.raises(UserInputError, match='train.7z'):
        list(sources.KaggleLayout(str(tmp_path)).batches('train', 10))


# ----------------------------------------------------------------------------
# Kaggle download. The network is not reachable here: these tests cover what
# happens before and around it.


@pytest.fixture
def no_kaggle_credentials(tmp_path, monkeypatch):
    for name in ('KAGGLE_USERNAME', 'KAGGLE_KEY', 'KAGGLE_API_TOKEN'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('KAGGLE_CONFIG_DIR', str(tmp_path / 'kaggle_config'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))


def test_missing_credentials_say_how_to_set_them_up(tmp_path, no_kaggle_credentials):
    with pytest.raises(UserInputError, match='kaggle.json.*KAGGLE_USERNAME.*KAGGLE_API_TOKEN'):
        sources.download_competition(str(tmp_path / 'downloads'))


def test_existing_zip_needs_no_network_nor_credentials(tmp_path, no_kaggle_credentials):
    (tmp_path / 'cifar-10.zip').write_bytes(b'zip')
    assert sources.download_competition(str(tmp_path)) == str(tmp_path / 'cifar-10.zip')


def _fake_kaggle(monkeypatch, error):
    from kaggle.api import kaggle_api_extended
    monkeypatch.setenv('KAGGLE_USERNAME', 'someone')
    monkeypatch.setenv('KAGGLE_KEY', 'secret')
    monkeypatch.setattr(kaggle_api_extended.KaggleApi, 'authenticate', lambda self: None)

    def download(self, competition, path=None, force=False, quiet=True, unzip=False):
        raise error

    monkeypatch.setattr(kaggle_api_extended.KaggleApi, 'competition_download_files', download)


def _http_error(status):
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f'{status} Client Error', response=response)


def test_http_403_says_to_accept_the_rules(tmp_path, monkeypatch, no_kaggle_credentials):
    _fake_kaggle(monkeypatch, _http_error(403))
    with pytest.raises(UserInputError, match='403.*https://www.kaggle.com/c/cifar-10/rules'):
        sources.download_competition(str(tmp_path))
    assert not (tmp_path / 'cifar-10.zip').exists()


def test_offline_download_fails_clearly(tmp_path, monkeypatch, no_kaggle_credentials):
    _fake_kaggle(monkeypatch, requests.ConnectionError('Name or service not known'))
    with pytest.raises(UserInputError, match='could not download.*--source=dir'):
        sources.download_competition(str(tmp_path))


# ----------------------------------------------------------------------------
# tensorflow-datasets, through its own mock (no download).


def test_tfds_source_yields_pixels_labels_and_ids(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):
        source = sources.TfdsSource(str(tmp_path))
        examples = _examples(source, 'train')
        test_examples = _examples(source, 'test')
    assert len(examples) == 12 and len(test_examples) == 12
    for image, label in examples.values():
        assert isinstance(image, np.ndarray)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert 0 <= label < 10
