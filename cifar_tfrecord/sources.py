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
from cifar_tfrecord import errors
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

# What an input may hold, checked against what its headers and listings
# declare before anything is decompressed or read, and again against what
# is read: a decompression bomb, or a header that lies, is refused in one
# line, and the converter's memory stays bounded whatever the input says.
#
# One PNG. A CIFAR-10 PNG takes 0.5 to 3 KB; the largest 32x32 PNG there is
# (16-bit RGBA, stored uncompressed) takes 8.3 KB of pixels. The rest is
# room for metadata a tool may add (an ICC profile, EXIF, text).
MAX_IMAGE_BYTES = 1 << 20
# Images of one set, and rows of the label CSV: Kaggle's test.7z holds
# 300,000 images (10,000 of them scored), its train.7z 50,000.
MAX_IMAGES = 500_000
# A set's PNGs together, and a 7z archive (PNGs barely compress): Kaggle's
# 300,000 test PNGs take about 0.7 GB.
MAX_SET_BYTES = 2 << 30
# trainLabels.csv: Kaggle's takes 0.6 MB; MAX_IMAGES rows take under 10 MB.
MAX_LABELS_BYTES = 64 << 20
# Entries of a zip: two sets of extracted images, and a few other files.
MAX_ZIP_ENTRIES = 2 * MAX_IMAGES + 100
# Kaggle's ids are numbers of at most six digits.
_MAX_ID_LENGTH = 100
# The 7z process holds an archive's compressed data (py7zr reads ahead), a
# batch, and the interpreter: a memory ceiling, over which it stops with a
# MemoryError that the converter reports, whatever the archive declares.
_ARCHIVE_LIMITS = archive.Limits(entry_bytes=MAX_IMAGE_BYTES, entries=MAX_IMAGES,
                                 total_bytes=MAX_SET_BYTES, memory_bytes=MAX_SET_BYTES + (1 << 30))


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
            csv_bytes = self._files.read_bytes(LABELS_CSV, MAX_LABELS_BYTES)
            labels = read_labels(csv_bytes, self._location(LABELS_CSV))
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
        _check_size(location, self._files.size(name), MAX_SET_BYTES, 'a set\'s 7z archive')

        def check_names(names):
            for entry in names:
                check_member_name(entry, location)
            _check_unique_names(names, location)
            on_count(sum(_is_image(entry) for entry in names))

        try:
            yield from archive.stream(*self._files.archive_path(name), location, _ARCHIVE_LIMITS,
                                      check_names)
        except archive.ArchiveError as error:
            raise UserInputError(str(error)) from None

    def _location(self, name: str) -> str:
        return os.path.join(self.path, name)


def read_labels(data: bytes, location: str) -> dict[str, int]:
    """Parses `trainLabels.csv` (`id,label`, label a class name) to id -> index.

    The file is UTF-8, with or without a byte order mark; other bytes are
    refused, naming their line. Rows may end in CRLF, and fields may be
    quoted or have spaces around them.
    """
    class_index = {name: index for index, name in enumerate(records.CLASS_NAMES)}
    rows = csv.reader(io.StringIO(_decode_utf8(data, location)), skipinitialspace=True,
                      strict=True)
    labels = {}
    try:
        header = next(rows, None)
        if header is None or [column.strip() for column in header] != ['id', 'label']:
            raise UserInputError(f'{location}: expected the header "id,label", found '
                                 f'{_shortened(header)}')
        for row in rows:
            _add_label(labels, row, rows.line_num, class_index, location)
    except csv.Error as error:
        raise UserInputError(f'{location}: line {rows.line_num}: {error}') from None
    if not labels:
        raise UserInputError(f'{location}: no labels')
    return labels


def _decode_utf8(data: bytes, location: str) -> str:
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        # Positions count from after a byte order mark, as does error.object.
        text, start = error.object, error.start
        line = text.count(b'\n', 0, start) + 1
        column = start - text.rfind(b'\n', 0, start)
        raise UserInputError(
            f'{location}: line {line}, byte {column} (0x{text[start]:02x}) is not UTF-8; '
            'save the file as UTF-8 (a spreadsheet\'s "CSV UTF-8")') from None


def _shortened(value) -> str:
    """`value` for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _add_label(labels: dict[str, int], row: list[str], line_number: int,
               class_index: dict[str, int], location: str) -> None:
    if not row:
        return
    if len(row) != 2:
        raise UserInputError(
            f'{location}: line {line_number} is not "id,label": {_shortened(row)}')
    if len(labels) >= MAX_IMAGES:
        raise UserInputError(f'{location}: more than {MAX_IMAGES:,} rows, the most a set may have')
    image_id, label = row[0].strip(), row[1].strip()
    _check_id(image_id, location, line_number)
    if label not in class_index:
        raise UserInputError(
            f'{location}: id {image_id} has label {_shortened(label)}, which is not one of the '
            'ten CIFAR-10 classes')
    if image_id in labels:
        raise UserInputError(f'{location}: duplicate id {image_id}')
    labels[image_id] = class_index[label]


def _batches(named: Iterator[tuple[str, bytes]], labels: dict[str, int] | None,
             batch_size: int, location: str,
             total: Callable[[], int | None]) -> Iterator[SourceBatch]:
    """Groups `(file name, image)` pairs into batches with ids and labels.

    `train/123.png` has the id '123'. Refuses a duplicate id and, given the
    CSV's `labels`, an image without a row or a row without an image; and a
    set over MAX_IMAGES or MAX_SET_BYTES, whatever its listing declared.
    `total()` is the set's size, once known.
    """
    named = ((name, image) for name, image in named if _is_image(name))
    seen = set()
    set_bytes = 0
    while group := list(itertools.islice(named, batch_size)):
        ids = _unique_ids([name for name, _ in group], seen, location)
        images = [image for _, image in group]
        set_bytes += sum(map(len, images))
        _check_set_size(len(seen), set_bytes, location)
        yield SourceBatch(ids, images, _labels_of(ids, labels, location), total())
    if labels is not None and len(seen) < len(labels):
        missing = sorted(labels.keys() - seen, key=id_sort_key)
        raise UserInputError(
            f'{LABELS_CSV}: id {missing[0]} has no image in {location}'
            + (f' ({len(missing) - 1} more ids too)' if len(missing) > 1 else ''))


def _check_set_size(count: int, size: int, location: str) -> None:
    if count > MAX_IMAGES:
        raise UserInputError(f'{location}: more than {MAX_IMAGES:,} images, the most a set may '
                             'have')
    if size > MAX_SET_BYTES:
        raise UserInputError(f'{location}: its images take more than {MAX_SET_BYTES:,} bytes, '
                             'the most a set may take')


def _check_size(location: str, size: int, limit: int, what: str) -> None:
    """Refuses a file whose size, declared or read, is over `limit`."""
    if size > limit:
        raise UserInputError(f'{location} takes {size:,} bytes, more than the {limit:,} {what} '
                             'may take')


def _check_unique_names(names: list[str], location: str) -> None:
    # py7zr would rename the second of two entries of one name, hiding it.
    if len(set(names)) < len(names):
        duplicate = next(name for name, count in collections.Counter(names).items() if count > 1)
        raise UserInputError(f'{location}: two entries are named {_shortened(duplicate)}')


def _is_image(name: str) -> bool:
    # Stray files (.DS_Store, notes) are not images.
    return name.lower().endswith('.png')


def _unique_ids(names: list[str], seen: set[str], location: str) -> list[str]:
    """The ids of `names`, added to `seen`; an id seen before is refused."""
    ids = []
    for name in names:
        image_id = name.rsplit('/', 1)[-1][:-len('.png')]
        _check_id(image_id, location, name)
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


def _check_id(image_id: str, location: str, culprit: str | int) -> None:
    """Refuses an id that a one-line message, or a record, could not hold.

    `culprit` is the id's entry name, or its line number in the CSV.
    """
    if image_id.isascii() and image_id.isprintable() and len(image_id) <= _MAX_ID_LENGTH:
        return  # Every Kaggle id: the test costs little per image.
    where = (f'{location}: line {culprit}' if isinstance(culprit, int)
             else f'{location}: entry {_shortened(culprit)}')
    if len(image_id) > _MAX_ID_LENGTH or not image_id.isprintable():
        raise UserInputError(f'{where}: the id {_shortened(image_id)} is not a line of at most '
                             f'{_MAX_ID_LENGTH} printable characters')
    try:
        image_id.encode()
    except UnicodeEncodeError:
        raise UserInputError(f'{where}: the id {_shortened(image_id)} is not valid Unicode') from None


def id_sort_key(image_id: str) -> tuple:
    """Kaggle ids are integers: sort '2' before '10'; other ids sort as text.

    Ids of one number ('7', '07') sort by their text, so no order of the
    source decides which comes first.
    """
    return (0, int(image_id), image_id) if image_id.isdecimal() else (1, 0, image_id)


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

    def archive_path(self, name: str) -> tuple[str, None]:
        return os.path.join(self.path, name), None

    def size(self, name: str) -> int:
        path = os.path.join(self.path, name)
        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.OpError as error:
            raise _unreadable(path, error) from None

    def read_bytes(self, name: str, max_bytes: int) -> bytes:
        """A file's bytes, refused when its size is over `max_bytes`."""
        path = os.path.join(self.path, name)
        _check_size(path, self.size(name), max_bytes, 'this file')
        return _read_file(path, max_bytes)

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
        images = [file for file in names if _is_image(file)]
        _check_set_size(len(images), 0, folder)
        on_count(len(images))
        prefix = folder.rstrip('/') + '/'  # Cheaper than os.path.join per file.
        for file in images:
            yield file, _read_file(prefix + file, MAX_IMAGE_BYTES)


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


def _read_file(path: str, max_bytes: int) -> bytes:
    """A file's bytes, refused when there are more than `max_bytes`."""
    try:
        if files.is_remote(path):
            with files.open_file(path) as file:
                data = file.read(max_bytes + 1)
        else:
            data = _read_local_file(path, max_bytes + 1)
    except (OSError, tf.errors.OpError) as error:
        raise _unreadable(path, error) from None
    if len(data) > max_bytes:
        raise UserInputError(f'{path} takes more than {max_bytes:,} bytes, the most this file '
                             'may take')
    return data


def _unreadable(path: str, error: Exception) -> UserInputError:
    reason = getattr(error, 'strerror', None) or getattr(error, 'message', error)
    return UserInputError(f'cannot read {path}: {reason}')


def _read_local_file(path: str, max_bytes: int) -> bytes:
    """At most `max_bytes` of a file."""
    # Bare system calls: a buffered open() costs more per small file, and a
    # set has 50,000 of them.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        size = 0
        while size < max_bytes and (chunk := os.read(descriptor, min(_READ_SIZE, max_bytes - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    return b''.join(chunks)


class _Zip:
    def __init__(self, path: str):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(tf.io.gfile.GFile(path, 'rb'))
        except Exception as error:  # zipfile raises many kinds on a corrupt zip.
            raise UserInputError(f'{path} is not a valid zip file ({errors.describe(error)})') from None
        names = self._zip.namelist()
        if len(names) > MAX_ZIP_ENTRIES:
            raise UserInputError(f'{path} holds {len(names):,} entries, more than the '
                                 f'{MAX_ZIP_ENTRIES:,} a Kaggle layout may have')
        for name in names:
            check_member_name(name, path)
        _check_unique_names(names, path)
        self._names = {name.rstrip('/') for name in names}

    def exists(self, name: str) -> bool:
        return name in self._names

    def isdir(self, name: str) -> bool:
        return any(member.startswith(name + '/') for member in self._names)

    def archive_path(self, name: str) -> tuple[str, str]:
        return self.path, name

    def size(self, name: str) -> int:
        """The member's size, as the zip declares it."""
        return self._zip.getinfo(name).file_size

    def read_bytes(self, name: str, max_bytes: int) -> bytes:
        """A member's bytes, refused when its declared size is over `max_bytes`.

        zipfile reads no more than the declared size, and checks the CRC-32.
        """
        _check_size(f'{self.path}: {name}', self.size(name), max_bytes, 'this file')
        try:
            return self._zip.read(name)
        except Exception as error:  # zipfile raises many kinds on corrupt data.
            raise UserInputError(f'{self.path}: cannot read {name} ({errors.describe(error)})') from None

    def fingerprint(self) -> list:
        stat = tf.io.gfile.stat(self.path)
        return [[os.path.basename(self.path), stat.length, stat.mtime_nsec]]

    def read_folder(self, name: str, on_count: Callable[[int], None]
                    ) -> Iterator[tuple[str, bytes]]:
        members = sorted(member for member in self._zip.namelist()
                         if member.startswith(name + '/') and _is_image(member))
        _check_set_size(len(members), sum(map(self.size, members)), f'{self.path}: {name}/')
        on_count(len(members))
        for member in members:
            yield member, self.read_bytes(member, MAX_IMAGE_BYTES)


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
