"""Where CIFAR-10 comes from: Kaggle, a local folder, tensorflow-datasets, or
the generated offline sample.

Every source yields Kaggle's two sets, 'train' and 'test', as
`SourceBatch(ids, images, labels)`: runs of consecutive images, column by
column, which costs less Python per image than one object each. `images`
holds PNG files' bytes (Kaggle's layouts) or uint8 pixels (tfds); `labels`
holds indices into CLASS_NAMES, or UNKNOWN_LABEL. Sources know nothing of
TFRecords: splitting, sharding and writing belong to the converter.
"""

import collections
import csv
import hashlib
import io
import itertools
import json
import os
import pathlib
import re
import zipfile
from stat import S_ISDIR
from typing import Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from cifar_tfrecord import archive
from cifar_tfrecord import files
from cifar_tfrecord import records
from cifar_tfrecord.errors import UserInputError

KAGGLE_SETS = ('train', 'test')
COMPETITION = 'cifar-10'
COMPETITION_ZIP = 'cifar-10.zip'
LABELS_CSV = 'trainLabels.csv'
SAMPLE_SUBMISSION_CSV = 'sampleSubmission.csv'
RULES_URL = 'https://www.kaggle.com/c/cifar-10/rules'
# Bytes per read of a file: a CIFAR-10 PNG, a few KB, takes one.
_READ_SIZE = 1 << 16


class SourceBatch(NamedTuple):
    """Consecutive images of one set, column by column."""
    ids: list[str]
    images: list[bytes] | np.ndarray  # PNG files, or (n, 32, 32, 3) uint8 pixels
    labels: np.ndarray  # int64, UNKNOWN_LABEL where unlabelled
    total: int | None = None  # Images in the whole set, once the source knows.


# ----------------------------------------------------------------------------
# Kaggle's layout: a zip, or 7z archives, or extracted PNGs, plus the CSV.


class KaggleLayout:
    """Kaggle's CIFAR-10 files in any of the forms a user may hold them.

    `path` is a `cifar-10.zip`, or a folder that holds one of: that zip;
    `train.7z` (and `test.7z`) beside `trainLabels.csv`; or extracted
    `train/<id>.png` (and `test/<id>.png`) beside `trainLabels.csv`. Images
    are read straight out of the archives, in memory; nothing is unpacked.
    """

    def __init__(self, path: str):
        self.path = path
        self._files = _open_container(path)
        self._extracted = not self._files.exists('train.7z')
        if self._extracted and not self._files.isdir('train'):
            if isinstance(self._files, _Zip):
                raise UserInputError(
                    f'{self._files.path} holds neither train.7z nor train/ with {LABELS_CSV}')
            raise UserInputError(f'data folder {path} holds neither {COMPETITION_ZIP}, nor '
                                 f'train.7z, nor train/ with {LABELS_CSV}')
        if not self._files.exists(LABELS_CSV):
            images = 'train/' if self._extracted else 'train.7z'
            raise UserInputError(f'{path}: {LABELS_CSV} not found beside {images}')

    def sets(self) -> tuple[str, ...]:
        """Kaggle's sets present here: always 'train', 'test' when it exists."""
        has_test = self._files.isdir('test') if self._extracted else self._files.exists('test.7z')
        return KAGGLE_SETS if has_test else ('train',)

    def fingerprint(self) -> dict:
        """Identifies the input by every file's name, size and modification
        time, without reading any: a rerun on unchanged input is skipped, and
        a changed image (even one of 50,000 extracted files) is not.
        """
        return {'kind': 'kaggle_layout', 'path': os.path.abspath(self.path),
                'files': self._files.fingerprint()}

    def batches(self, kaggle_set: str, batch_size: int) -> Iterator[SourceBatch]:
        """Yields the set's images with their labels (train) or without (test)."""
        labels = None
        # The set's size, for progress: the CSV's rows, else the listing of
        # the folder or archive, known once it is read.
        counted = []
        if kaggle_set == 'train':
            labels = read_labels(self._files.read_text(LABELS_CSV), self._location(LABELS_CSV))
            counted.append(len(labels))
        if self._extracted:
            named = self._files.read_folder(kaggle_set, counted.append)
        else:
            named = self._stream_7z(f'{kaggle_set}.7z', counted.append)
        return _batches(named, labels, batch_size, self._location(kaggle_set),
                        lambda: counted[0] if counted else None)

    def _stream_7z(self, name: str, on_count: Callable[[int], None]
                   ) -> Iterator[tuple[str, bytes]]:
        location = self._location(name)

        def check_names(names):
            for entry in names:
                check_member_name(entry, location)
            on_count(sum(_is_image(entry) for entry in names))

        try:
            yield from archive.stream(*self._files.archive_path(name), location, check_names)
        except archive.ArchiveError as error:
            raise UserInputError(str(error)) from None

    def _location(self, name: str) -> str:
        return os.path.join(self.path, name)


def read_labels(text: str, location: str) -> dict[str, int]:
    """Parses `trainLabels.csv` (`id,label`, label a class name) to id -> index."""
    class_index = {name: index for index, name in enumerate(records.CLASS_NAMES)}
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [column.strip() for column in header] != ['id', 'label']:
        raise UserInputError(f'{location}: expected the header "id,label", found {header}')
    labels = {}
    for line_number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise UserInputError(f'{location}: line {line_number} is not "id,label": {row}')
        image_id, label = row[0].strip(), row[1].strip()
        if label not in class_index:
            raise UserInputError(
                f'{location}: id {image_id} has label {label!r}, which is not one of '
                f'the ten CIFAR-10 classes')
        if image_id in labels:
            raise UserInputError(f'{location}: duplicate id {image_id}')
        labels[image_id] = class_index[label]
    if not labels:
        raise UserInputError(f'{location}: no labels')
    return labels


def _batches(named: Iterator[tuple[str, bytes]], labels: dict[str, int] | None,
             batch_size: int, location: str,
             total: Callable[[], int | None]) -> Iterator[SourceBatch]:
    """Groups `(file name, image)` pairs into batches with ids and labels.

    `train/123.png` has the id '123'. Refuses a duplicate id and, given the
    CSV's `labels`, an image without a row or a row without an image.
    `total()` is the set's size, once known.
    """
    named = ((name, image) for name, image in named if _is_image(name))
    seen = set()
    while group := list(itertools.islice(named, batch_size)):
        ids = _unique_ids([name for name, _ in group], seen, location)
        yield SourceBatch(ids, [image for _, image in group], _labels_of(ids, labels, location),
                          total())
    if labels is not None and len(seen) < len(labels):
        missing = sorted(labels.keys() - seen, key=id_sort_key)
        raise UserInputError(
            f'{LABELS_CSV}: id {missing[0]} has no image in {location}'
            + (f' ({len(missing) - 1} more ids too)' if len(missing) > 1 else ''))


def _is_image(name: str) -> bool:
    # Stray files (.DS_Store, notes) are not images.
    return name.lower().endswith('.png')


def _unique_ids(names: list[str], seen: set[str], location: str) -> list[str]:
    """The ids of `names`, added to `seen`; an id seen before is refused."""
    ids = []
    for name in names:
        image_id = name.rsplit('/', 1)[-1][:-len('.png')]
        if image_id in seen:
            raise UserInputError(f'{location}: duplicate id {image_id} ({name})')
        seen.add(image_id)
        ids.append(image_id)
    return ids


def _labels_of(ids: list[str], labels: dict[str, int] | None, location: str) -> np.ndarray:
    if labels is None:
        return np.full(len(ids), records.UNKNOWN_LABEL, np.int64)
    try:
        return np.array([labels[image_id] for image_id in ids], np.int64)
    except KeyError as error:
        raise UserInputError(
            f'{location}: image {error.args[0]}.png has no row in {LABELS_CSV}') from None


def id_sort_key(image_id: str) -> tuple:
    """Kaggle ids are integers: sort '2' before '10'; other ids sort as text."""
    return (0, int(image_id), '') if image_id.isdigit() else (1, 0, image_id)


def check_member_name(name: str, location: str) -> None:
    """Refuses an archive entry that would land outside its folder."""
    normalized = name.replace('\\', '/')
    if (normalized.startswith('/') or re.match(r'^[A-Za-z]:', normalized)
            or '..' in pathlib.PurePosixPath(normalized).parts):
        raise UserInputError(f'{location}: entry {name!r} escapes the archive folder')


# ----------------------------------------------------------------------------
# Containers: a folder, or a zip, seen the same way.


def _open_container(path: str) -> '_Folder | _Zip':
    if not tf.io.gfile.exists(path):
        raise UserInputError(f'data folder {path} does not exist')
    if not tf.io.gfile.isdir(path):
        if path.endswith('.zip'):
            return _Zip(path)
        raise UserInputError(f'{path} is neither a folder nor a .zip file')
    zip_path = os.path.join(path, COMPETITION_ZIP)
    if tf.io.gfile.exists(zip_path):
        return _Zip(zip_path)
    if not tf.io.gfile.listdir(path):
        raise UserInputError(
            f'data folder {path} is empty: expected {COMPETITION_ZIP}, or train.7z with '
            f'{LABELS_CSV}, or train/<id>.png with {LABELS_CSV}')
    return _Folder(path)


class _Folder:
    def __init__(self, path: str):
        self.path = path

    def exists(self, name: str) -> bool:
        return tf.io.gfile.exists(os.path.join(self.path, name))

    def isdir(self, name: str) -> bool:
        return tf.io.gfile.isdir(os.path.join(self.path, name))

    def open(self, name: str):
        return tf.io.gfile.GFile(os.path.join(self.path, name), 'rb')

    def archive_path(self, name: str) -> tuple[str, None]:
        return os.path.join(self.path, name), None

    def read_text(self, name: str) -> str:
        with self.open(name) as file:
            return file.read().decode('utf-8-sig')

    def fingerprint(self) -> list:
        """`[name, size, mtime]` of each top-level file (archives, the CSV),
        and `[folder/, file count, sha256]` of each subfolder, the sha256 over
        every file below it: one stat per file, and a manifest that stays small.
        """
        top_level, in_subfolders = [], collections.defaultdict(list)
        for entry in _file_stats(self.path):
            subfolder, separator, _ = entry[0].partition('/')
            if separator:
                in_subfolders[subfolder].append(entry)
            else:
                top_level.append(list(entry))  # As JSON reads it back from a manifest.
        for subfolder, entries in in_subfolders.items():
            digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
            top_level.append([subfolder + '/', len(entries), digest])
        return sorted(top_level)

    def read_folder(self, name: str, on_count: Callable[[int], None]
                    ) -> Iterator[tuple[str, bytes]]:
        """Yields `(file name, bytes)` for every file of a subfolder, read
        lazily, in name order: the file system's own order varies. Tells
        `on_count` how many images it holds first.
        """
        folder = os.path.join(self.path, name)
        names = sorted(file for file in tf.io.gfile.listdir(folder) if not file.endswith('/'))
        if not names:
            raise UserInputError(f'{folder} holds no images')
        on_count(sum(_is_image(file) for file in names))
        prefix = folder.rstrip('/') + '/'  # Cheaper than os.path.join per file.
        for file in names:
            yield file, _read_file(prefix + file)


def _file_stats(folder: str, below: str = '') -> list[tuple[str, int, int]]:
    """`(path below folder, size, mtime in ns)` of every file below `folder`,
    each folder's names in sorted order: one stat per file, nothing read.

    Symbolic links are followed: a linked train/ holds the images as well.
    """
    remote = files.is_remote(folder)
    listdir = tf.io.gfile.listdir if remote else os.listdir
    prefix = folder.rstrip('/') + '/'  # Cheaper than os.path.join per file.
    entries = []
    # Remote file systems end folders' names with '/'.
    for name in sorted(name.rstrip('/') for name in listdir(folder)):
        is_folder, size, mtime = _stat(prefix + name, remote)
        if is_folder:
            entries += _file_stats(prefix + name, f'{below}{name}/')
        else:
            entries.append((below + name, size, mtime))
    return entries


def _stat(path: str, remote: bool) -> tuple[bool, int, int]:
    """Whether `path` is a folder, its size and its mtime in ns."""
    try:
        if remote:
            stat = tf.io.gfile.stat(path)
            return stat.is_directory, stat.length, stat.mtime_nsec
        stat = os.stat(path)
        return S_ISDIR(stat.st_mode), stat.st_size, stat.st_mtime_ns
    except (OSError, tf.errors.OpError) as error:
        raise _unreadable(path, error) from None


def _read_file(path: str) -> bytes:
    try:
        if files.is_remote(path):
            with files.open_file(path) as file:
                return file.read()
        return _read_local_file(path)
    except (OSError, tf.errors.OpError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: str, error: Exception) -> UserInputError:
    reason = getattr(error, 'strerror', None) or getattr(error, 'message', error)
    return UserInputError(f'cannot read {path}: {reason}')


def _read_local_file(path: str) -> bytes:
    # Bare system calls: a buffered open() costs more per small file, and a
    # set has 50,000 of them.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(descriptor, _READ_SIZE):
            chunks.append(chunk)
    finally:
        os.close(descriptor)
    return b''.join(chunks)


class _Zip:
    def __init__(self, path: str):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(tf.io.gfile.GFile(path, 'rb'))
        except zipfile.BadZipFile as error:
            raise UserInputError(f'{path} is not a valid zip file: {error}') from error
        for name in self._zip.namelist():
            check_member_name(name, path)
        self._names = {name.rstrip('/') for name in self._zip.namelist()}

    def exists(self, name: str) -> bool:
        return name in self._names

    def isdir(self, name: str) -> bool:
        return any(member.startswith(name + '/') for member in self._names)

    def archive_path(self, name: str) -> tuple[str, str]:
        return self.path, name

    def read_text(self, name: str) -> str:
        return self._zip.read(name).decode('utf-8-sig')

    def fingerprint(self) -> list:
        stat = tf.io.gfile.stat(self.path)
        return [[os.path.basename(self.path), stat.length, stat.mtime_nsec]]

    def read_folder(self, name: str, on_count: Callable[[int], None]
                    ) -> Iterator[tuple[str, bytes]]:
        members = sorted(member for member in self._names if member.startswith(name + '/'))
        on_count(sum(_is_image(member) for member in members))
        for member in members:
            yield member, self._zip.read(member)


# ----------------------------------------------------------------------------
# Kaggle: the competition download.


def kaggle_credentials_found() -> bool:
    """Whether any of the kaggle package's credential forms is set up."""
    if os.environ.get('KAGGLE_API_TOKEN') or (
            os.environ.get('KAGGLE_USERNAME') and os.environ.get('KAGGLE_KEY')):
        return True
    config_dir = os.environ.get('KAGGLE_CONFIG_DIR') or os.path.expanduser('~/.kaggle')
    return any(os.path.exists(os.path.join(config_dir, name))
               for name in ('kaggle.json', 'access_token', 'credentials.json'))


CREDENTIALS_HELP = (
    'no Kaggle credentials found: create an API token at '
    'https://www.kaggle.com/settings/api, then save kaggle.json as '
    '~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY, '
    'or set KAGGLE_API_TOKEN; or convert without Kaggle with --source=tfds or '
    '--source=sample')


def download_competition(download_dir: str) -> str:
    """Downloads Kaggle's cifar-10 zip into `download_dir`, unless it is there.

    Returns:
        The path of `cifar-10.zip`.
    """
    zip_path = os.path.join(download_dir, COMPETITION_ZIP)
    if os.path.exists(zip_path):
        return zip_path  # Already downloaded: no network at all.
    if not kaggle_credentials_found():
        raise UserInputError(CREDENTIALS_HELP)
    # The download lands in a private folder and moves into place only when
    # complete, so a broken download is never mistaken for the zip.
    partial_dir = os.path.join(download_dir, '.partial')
    os.makedirs(partial_dir, exist_ok=True)
    api = _kaggle_api()
    try:
        api.competition_download_files(COMPETITION, path=partial_dir, quiet=False)
    except Exception as error:  # The kaggle package raises several kinds.
        raise UserInputError(_explain_kaggle_error(error)) from error
    os.replace(os.path.join(partial_dir, COMPETITION_ZIP), zip_path)
    return zip_path


def _kaggle_api():
    # Imported here: old versions of the package authenticate at import time.
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
    except (Exception, SystemExit) as error:
        raise UserInputError(f'Kaggle authentication failed ({error}); {CREDENTIALS_HELP}') from error
    return api


def _explain_kaggle_error(error: Exception) -> str:
    response = getattr(error, 'response', None)
    status = getattr(error, 'status', None) or getattr(response, 'status_code', None)
    if status == 403:
        return (f'Kaggle refused the download (HTTP 403): accept the competition '
                f'rules at {RULES_URL} with your account, then run again')
    if status == 401:
        return f'Kaggle rejected the credentials (HTTP 401); {CREDENTIALS_HELP}'
    return (f'could not download the {COMPETITION} competition from Kaggle '
            f'({type(error).__name__}: {error}); check the network, or use '
            f'--source=dir with a downloaded {COMPETITION_ZIP}')


# ----------------------------------------------------------------------------
# tensorflow-datasets.


class TfdsSource:
    """The `cifar10` data set of tensorflow-datasets: pixels, labelled test set."""

    def __init__(self, data_dir: str | None):
        import tensorflow_datasets as tfds  # Heavy; only this source needs it.
        self._builder = tfds.builder('cifar10', data_dir=data_dir)
        try:
            self._builder.download_and_prepare()
        except Exception as error:  # Network errors come in many kinds.
            raise UserInputError(
                f'tensorflow-datasets could not prepare cifar10 in '
                f'{self._builder.data_dir} ({type(error).__name__}: '
                f'{str(error).splitlines()[0] if str(error) else ""}); check the '
                f'network, or use --source=dir or --source=sample') from error
        self._datasets = {kaggle_set: self._builder.as_dataset(split=kaggle_set)
                          for kaggle_set in KAGGLE_SETS}

    def sets(self) -> tuple[str, ...]:
        return KAGGLE_SETS

    def fingerprint(self) -> dict:
        return {'kind': 'tfds', 'name': self._builder.name,
                'version': str(self._builder.version)}

    def batches(self, kaggle_set: str, batch_size: int) -> Iterator[SourceBatch]:
        total = int(self._datasets[kaggle_set].cardinality())
        dataset = self._datasets[kaggle_set].batch(batch_size)
        for batch in dataset.as_numpy_iterator():
            yield SourceBatch([image_id.decode() for image_id in batch['id']], batch['image'],
                              batch['label'].astype(np.int64), total if total >= 0 else None)
