"""Where CIFAR-10 comes from: Kaggle (downloaded, or a folder or zip),
tensorflow-datasets, or the generated offline sample (sample.py). Every
source yields Kaggle's sets, 'train' and 'test', in SourceBatch columns,
which cost less Python per image than one object each. This module loads no
TensorFlow (records, sample and tfds are imported where used): a script
makes its source, and starts its archives decompressing, before TF loads.
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
from absl import logging

from cifar_tfrecord import archive
from cifar_tfrecord import errors
from cifar_tfrecord import files
from cifar_tfrecord.config import ConvertConfig
from cifar_tfrecord.errors import UserInputError

KAGGLE_SETS = ('train', 'test')
COMPETITION = 'cifar-10'
COMPETITION_ZIP = 'cifar-10.zip'
LABELS_CSV = 'trainLabels.csv'
SAMPLE_SUBMISSION_CSV = 'sampleSubmission.csv'
RULES_URL = 'https://www.kaggle.com/c/cifar-10/rules'
# Bytes per read of a file: a CIFAR-10 PNG, a few KB, takes one.
_READ_SIZE = 1 << 16

# What an input may hold (the README's "Hostile input" says why each value),
# checked against what headers and listings declare before anything is
# decompressed or read, and again against what is read: a decompression bomb,
# or a header that lies, is refused in one line, and memory stays bounded.
MAX_IMAGE_BYTES = 1 << 20  # One PNG, with room for metadata a tool may add.
MAX_IMAGES = 500_000  # Images of a set, rows of the CSV.
MAX_SET_BYTES = 2 << 30  # A set's PNGs together, and a 7z archive.
MAX_LABELS_BYTES = 64 << 20  # trainLabels.csv.
MAX_ZIP_ENTRIES = 2 * MAX_IMAGES + 100  # Two sets of extracted images, and a few files.
_MAX_ID_LENGTH = 100  # Kaggle's ids are numbers of at most six digits.
# The 7z process holds an archive's compressed data (py7zr reads ahead), a
# batch and the interpreter: over this ceiling it stops with a MemoryError,
# reported, whatever the archive declares.
_ARCHIVE_LIMITS = archive.Limits(entry_bytes=MAX_IMAGE_BYTES, entries=MAX_IMAGES,
                                 total_bytes=MAX_SET_BYTES, memory_bytes=MAX_SET_BYTES + (1 << 30))


class SourceBatch(NamedTuple):
    """Consecutive images of one set, column by column."""
    ids: list[str]
    images: list[bytes] | np.ndarray  # PNG files, or (n, 32, 32, 3) uint8 pixels
    labels: np.ndarray  # int64, UNKNOWN_LABEL where unlabelled
    total: int | None = None  # Images in the whole set, once the source knows.


class KaggleLayout:
    """Kaggle's CIFAR-10 files in any form a user may hold them: `path` is a
    folder or a `cifar-10.zip` (or a folder with that zip) holding `train.7z`
    (and `test.7z`), or extracted `train/<id>.png` (and `test/`), beside
    `trainLabels.csv`. Archives are read in memory, never unpacked."""

    def __init__(self, path: str):
        self.path = path
        self._streams = {}  # Kaggle set: its 7z archive's entries, decompressing since `start`.
        self._listed = {}  # Kaggle set: the images its 7z archive lists.
        self._files = _open_container(path)
        self._extracted = not self._files.exists('train.7z')
        if self._extracted and not self._files.isdir('train'):
            if self._files.zip_file:
                raise UserInputError(
                    f'{self._files.path} holds neither train.7z nor train/ with {LABELS_CSV}')
            raise UserInputError(f'data folder {path} holds neither {COMPETITION_ZIP}, nor '
                                 f'train.7z, nor train/ with {LABELS_CSV}')
        if not self._files.exists(LABELS_CSV):
            images = 'train/' if self._extracted else 'train.7z'
            raise UserInputError(f'{path}: {LABELS_CSV} not found beside {images}')
        has_test = self._files.isdir('test') if self._extracted else self._files.exists('test.7z')
        self.sets = KAGGLE_SETS if has_test else ('train',)  # Kaggle's sets present.

    def fingerprint(self) -> dict:
        """The input, by its files' names, sizes and modification times: a
        rerun on unchanged input is skipped, one with a changed image is not."""
        return {'kind': 'kaggle_layout', 'path': os.path.abspath(self.path),
                'files': self._files.fingerprint()}

    def start(self) -> None:
        """Starts every set's 7z archive decompressing, each in a process of
        its own, ahead of `batches`: while TensorFlow loads, and while the
        train set converts, the other core decompresses."""
        if not self._extracted:
            self._streams = {kaggle_set: self._stream_7z(kaggle_set) for kaggle_set in self.sets}

    def batches(self, kaggle_set: str, batch_size: int) -> Iterator[SourceBatch]:
        labels = None
        counted = []  # The set's size, for progress: the CSV's rows, or its listing's.
        if kaggle_set == 'train':
            csv_bytes = self._files.read_bytes(LABELS_CSV, MAX_LABELS_BYTES)
            labels = read_labels(csv_bytes, os.path.join(self.path, LABELS_CSV))
            counted.append(len(labels))
        named = (self._files.read_folder(kaggle_set, counted.append) if self._extracted
                 else self._streams.pop(kaggle_set, None) or self._stream_7z(kaggle_set))
        return _batches(named, labels, batch_size, os.path.join(self.path, kaggle_set),
                        lambda: counted[0] if counted else self._listed.get(kaggle_set))

    def _stream_7z(self, kaggle_set: str) -> Iterator[tuple[str, bytes]]:
        name = f'{kaggle_set}.7z'
        location = os.path.join(self.path, name)
        _check_size(location, self._files.sizes[name], MAX_SET_BYTES, 'a set\'s 7z archive')

        def check_names(names):
            for entry in names:
                check_member_name(entry, location)
            _check_unique_names(names, location)
            self._listed[kaggle_set] = sum(map(_is_image, names))

        path, member = (self._files.path, name) if self._files.zip_file else (location, None)
        return archive.stream(path, member, location, _ARCHIVE_LIMITS, check_names)


def read_labels(data: bytes, location: str) -> dict[str, int]:
    """`trainLabels.csv` (`id,label`, a class name) as id -> class index. A
    spreadsheet's habits are read: a byte order mark, CRLF, quotes, spaces."""
    from cifar_tfrecord import records  # Loads TensorFlow, by then loaded.
    class_index = {name: index for index, name in enumerate(records.CLASS_NAMES)}
    rows = csv.reader(io.StringIO(_decode_utf8(data, location)), skipinitialspace=True,
                      strict=True)
    labels = {}
    try:
        header = next(rows, None)
        if header is None or [column.strip() for column in header] != ['id', 'label']:
            raise UserInputError(f'{location}: expected the header "id,label", found '
                                 f'{_shortened(header)}')
        for row in filter(None, rows):
            if len(row) != 2:
                raise UserInputError(
                    f'{location}: line {rows.line_num} is not "id,label": {_shortened(row)}')
            if len(labels) >= MAX_IMAGES:
                raise UserInputError(
                    f'{location}: more than {MAX_IMAGES:,} rows, the most a set may have')
            image_id, label = row[0].strip(), row[1].strip()
            _check_id(image_id, location, rows.line_num)
            if label not in class_index:
                raise UserInputError(f'{location}: id {image_id} has label {_shortened(label)}, '
                                     'which is not one of the ten CIFAR-10 classes')
            if image_id in labels:
                raise UserInputError(f'{location}: duplicate id {image_id}')
            labels[image_id] = class_index[label]
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


def _batches(named: Iterator[tuple[str, bytes]], labels: dict[str, int] | None,
             batch_size: int, location: str,
             total: Callable[[], int | None]) -> Iterator[SourceBatch]:
    """`(file name, image)` pairs in batches with ids ('train/123.png': '123')
    and labels. Refuses a duplicate id, an image without a row in `labels`
    or a row without an image, and a set over MAX_IMAGES or MAX_SET_BYTES."""
    named = ((name, image) for name, image in named if _is_image(name))
    seen = set()
    set_bytes = 0
    while group := list(itertools.islice(named, batch_size)):
        ids = []
        for name, _ in group:
            image_id = name.rsplit('/', 1)[-1][:-len('.png')]
            _check_id(image_id, location, name)
            if image_id in seen:
                raise UserInputError(f'{location}: duplicate id {image_id} ({name})')
            seen.add(image_id)
            ids.append(image_id)
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
    if size > limit:
        raise UserInputError(f'{location} takes {size:,} bytes, more than the {limit:,} {what} '
                             'may take')


def _check_unique_names(names: list[str], location: str) -> None:
    # py7zr would rename the second of two entries of one name, hiding it.
    duplicates = [name for name, count in collections.Counter(names).items() if count > 1]
    if duplicates:
        raise UserInputError(f'{location}: two entries are named {_shortened(duplicates[0])}')


def _is_image(name: str) -> bool:
    # Stray files (.DS_Store, notes) are not images.
    return name.lower().endswith('.png')


def _labels_of(ids: list[str], labels: dict[str, int] | None, location: str) -> np.ndarray:
    from cifar_tfrecord import records  # Loads TensorFlow, by then loaded.
    if labels is None:
        return np.full(len(ids), records.UNKNOWN_LABEL, np.int64)
    try:
        return np.array([labels[image_id] for image_id in ids], np.int64)
    except KeyError as error:
        raise UserInputError(
            f'{location}: image {error.args[0]}.png has no row in {LABELS_CSV}') from None


def _check_id(image_id: str, location: str, culprit: str | int) -> None:
    """Refuses an id that a one-line message, or a record, could not hold
    (the surrogates of a name that is not UTF-8 are not printable);
    `culprit` is its entry name, or its line number in the CSV."""
    if len(image_id) <= _MAX_ID_LENGTH and image_id.isprintable():
        return
    where = (f'{location}: line {culprit}' if isinstance(culprit, int)
             else f'{location}: entry {_shortened(culprit)}')
    raise UserInputError(f'{where}: the id {_shortened(image_id)} is not a line of at most '
                         f'{_MAX_ID_LENGTH} printable characters')


def id_sort_key(image_id: str) -> tuple:
    """Kaggle ids are integers: '2' sorts before '10', other ids as text. Ids
    of one number ('7', '07') sort by their text: no order of the source
    decides which comes first."""
    return (0, int(image_id), image_id) if image_id.isdecimal() else (1, 0, image_id)


def check_member_name(name: str, location: str) -> None:
    """Refuses an archive entry that would land outside its folder."""
    normalized = name.replace('\\', '/')
    if (normalized.startswith('/') or re.match(r'^[A-Za-z]:', normalized)
            or '..' in pathlib.PurePosixPath(normalized).parts):
        raise UserInputError(f'{location}: entry {name!r} escapes the archive folder')


def _open_container(path: str) -> '_Container':
    if not files.exists(path):
        raise UserInputError(f'data folder {path} does not exist')
    if not files.isdir(path):
        if path.endswith('.zip'):
            return _Container(path, _open_zip(path))
        raise UserInputError(f'{path} is neither a folder nor a .zip file')
    if files.exists(os.path.join(path, COMPETITION_ZIP)):
        return _open_container(os.path.join(path, COMPETITION_ZIP))
    if not files.listdir(path):
        raise UserInputError(
            f'data folder {path} is empty: expected {COMPETITION_ZIP}, or train.7z with '
            f'{LABELS_CSV}, or train/<id>.png with {LABELS_CSV}')
    return _Container(path)


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        zip_file = zipfile.ZipFile(files.open_file(path, 'rb'))
    except Exception as error:  # zipfile raises many kinds on a corrupt zip.
        raise UserInputError(f'{path} is not a valid zip file ({errors.describe(error)})') from None
    names = zip_file.namelist()
    if len(names) > MAX_ZIP_ENTRIES:
        raise UserInputError(f'{path} holds {len(names):,} entries, more than the '
                             f'{MAX_ZIP_ENTRIES:,} a Kaggle layout may have')
    for name in names:
        check_member_name(name, path)
    _check_unique_names(names, path)
    return zip_file


class _Container:
    """The files of a folder, or the members of a zip, by their names below it
    ('train/1.png'), with their sizes: a folder's are listed once, a stat
    each, and a zip's are as it declares them."""

    def __init__(self, path: str, zip_file: zipfile.ZipFile | None = None):
        self.path = path
        self.zip_file = zip_file
        if zip_file:
            self.sizes = {info.filename: info.file_size for info in zip_file.infolist()
                           if not info.is_dir()}
        else:
            self._stats = _file_stats(path, '')
            self.sizes = {name: size for name, size, _ in self._stats}

    def exists(self, name: str) -> bool:
        return name in self.sizes

    def isdir(self, name: str) -> bool:
        if self.zip_file:
            return any(member.startswith(name + '/') for member in self.sizes)
        return files.isdir(os.path.join(self.path, name))

    def _where(self, name: str) -> str:  # How a message names a file.
        return f'{self.path}: {name}' if self.zip_file else os.path.join(self.path, name)

    def read_bytes(self, name: str, max_bytes: int) -> bytes:
        _check_size(self._where(name), self.sizes[name], max_bytes, 'this file')
        if not self.zip_file:
            return _read_file(self._where(name), max_bytes)
        try:
            # zipfile reads no more than the declared size, and checks the CRC-32.
            return self.zip_file.read(name)
        except Exception as error:  # zipfile raises many kinds on corrupt data.
            raise UserInputError(
                f'{self.path}: cannot read {name} ({errors.describe(error)})') from None

    def fingerprint(self) -> list:
        """A zip's `[name, size, mtime]`; or a folder's, of each top-level file
        (archives, the CSV), and `[folder/, file count, sha256]` of each
        subfolder, the sha256 over its files' the same: a small manifest."""
        if self.zip_file:
            return [[os.path.basename(self.path), *_stat(self.path)[1:]]]
        top_level, in_subfolders = [], collections.defaultdict(list)
        for entry in self._stats:
            subfolder, separator, _ = entry[0].partition('/')
            (in_subfolders[subfolder] if separator else top_level).append(entry)
        for subfolder, entries in in_subfolders.items():
            digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
            top_level.append([subfolder + '/', len(entries), digest])
        return sorted(top_level)

    def read_folder(self, name: str, on_count: Callable[[int], None]
                    ) -> Iterator[tuple[str, bytes]]:
        """`(name, bytes)` of every image below a folder, read lazily, in name order."""
        members = sorted(member for member in self.sizes
                         if member.startswith(name + '/') and _is_image(member))
        _check_set_size(len(members), sum(map(self.sizes.get, members)), self._where(name))
        on_count(len(members))
        for member in members:
            yield member, self.read_bytes(member, MAX_IMAGE_BYTES)


def _file_stats(folder: str, below: str) -> list[list]:
    """`[below + path, size, mtime in ns]` of every file below `folder` (lists,
    as JSON reads them back), in sorted order; symbolic links are followed."""
    prefix = folder.rstrip('/') + '/'  # Cheaper than os.path.join per file.
    entries = []
    for name in files.listdir(folder):
        is_folder, size, mtime = _stat(prefix + name)
        if is_folder:
            entries += _file_stats(prefix + name, f'{below}{name}/')
        else:
            entries.append([below + name, size, mtime])
    return entries


def _stat(path: str) -> tuple[bool, int, int]:
    """Whether `path` is a folder, its size and its mtime in ns."""
    try:
        if files.is_remote(path):
            stat = files.gfile().stat(path)
            return stat.is_directory, stat.length, stat.mtime_nsec
        stat = os.stat(path)
        return S_ISDIR(stat.st_mode), stat.st_size, stat.st_mtime_ns
    except Exception as error:  # OSError, or tf.errors.OpError when remote.
        raise _unreadable(path, error) from None


def _read_file(path: str, max_bytes: int) -> bytes:
    """A file's bytes, refused when there are more than `max_bytes`."""
    try:
        # Local files unbuffered: a buffered open() costs more per small file,
        # and a set has 50,000 of them.
        with (files.open_file(path) if files.is_remote(path)
              else open(path, 'rb', buffering=0)) as file:
            data = file.read(_READ_SIZE)  # Not max_bytes, which each read would allocate.
            while len(data) <= max_bytes and (chunk := file.read(_READ_SIZE)):
                data += chunk
    except Exception as error:  # OSError, or tf.errors.OpError when remote.
        raise _unreadable(path, error) from None
    if len(data) > max_bytes:
        raise UserInputError(f'{path} takes more than {max_bytes:,} bytes, the most this file '
                             'may take')
    return data


def _unreadable(path: str, error: Exception) -> UserInputError:
    reason = getattr(error, 'strerror', None) or getattr(error, 'message', error)
    return UserInputError(f'cannot read {path}: {reason}')



def kaggle_credentials_found() -> bool:
    """Whether any of the kaggle package's credential forms is set up."""
    if os.environ.get('KAGGLE_API_TOKEN') or (
            os.environ.get('KAGGLE_USERNAME') and os.environ.get('KAGGLE_KEY')):
        return True
    config_dir = os.environ.get('KAGGLE_CONFIG_DIR') or os.path.expanduser('~/.kaggle')
    return any(os.path.exists(os.path.join(config_dir, name))
               for name in ('kaggle.json', 'access_token', 'credentials.json'))


CREDENTIALS_HELP = (
    'no Kaggle credentials found: create an API token at https://www.kaggle.com/settings/api, '
    'then save kaggle.json as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and '
    'KAGGLE_KEY, or set KAGGLE_API_TOKEN; or convert without Kaggle with --source=tfds or '
    '--source=sample')


def download_competition(download_dir: str) -> str:
    """The path of Kaggle's cifar-10.zip in `download_dir`, downloaded unless it is there."""
    zip_path = os.path.join(download_dir, COMPETITION_ZIP)
    if os.path.exists(zip_path):
        return zip_path  # Already downloaded: no network at all.
    if not kaggle_credentials_found():
        raise UserInputError(CREDENTIALS_HELP)
    # The download lands in a private folder and moves into place only when
    # complete, so a broken download is never mistaken for the zip.
    partial_dir = os.path.join(download_dir, files.PARTIAL)
    files.makedirs(partial_dir)
    try:
        # Imported here: old versions of the package authenticate at import time.
        from kaggle.api.kaggle_api_extended import KaggleApi
        api = KaggleApi()
        api.authenticate()
    except (Exception, SystemExit) as error:
        raise UserInputError(
            f'Kaggle authentication failed ({error}); {CREDENTIALS_HELP}') from error
    try:
        api.competition_download_files(COMPETITION, path=partial_dir, quiet=False)
    except Exception as error:  # The kaggle package raises several kinds.
        raise UserInputError(_explain_kaggle_error(error)) from error
    os.replace(os.path.join(partial_dir, COMPETITION_ZIP), zip_path)
    return zip_path


def _explain_kaggle_error(error: Exception) -> str:
    response = getattr(error, 'response', None)
    status = getattr(error, 'status', None) or getattr(response, 'status_code', None)
    if status == 403:
        return (f'Kaggle refused the download (HTTP 403): accept the competition '
                f'rules at {RULES_URL} with your account, then run again')
    if status == 401:
        return f'Kaggle rejected the credentials (HTTP 401); {CREDENTIALS_HELP}'
    return (f'could not download the {COMPETITION} competition from Kaggle '
            f'({errors.describe(error)}); check the network, or use '
            f'--source=dir with a downloaded {COMPETITION_ZIP}')


class TfdsSource:
    """The `cifar10` data set of tensorflow-datasets: pixels, labelled test set."""
    sets = KAGGLE_SETS

    def __init__(self, data_dir: str | None):
        import tensorflow_datasets as tfds  # Heavy; only this source needs it.
        self._builder = tfds.builder('cifar10', data_dir=data_dir)
        try:
            self._builder.download_and_prepare()
        except Exception as error:  # Network errors come in many kinds.
            raise UserInputError(
                f'tensorflow-datasets could not prepare cifar10 in {self._builder.data_dir} '
                f'({errors.describe(error)}); check the network, or use --source=dir or '
                '--source=sample') from error

    def fingerprint(self) -> dict:
        return {'kind': 'tfds', 'name': self._builder.name, 'version': str(self._builder.version)}

    def batches(self, kaggle_set: str, batch_size: int) -> Iterator[SourceBatch]:
        dataset = self._builder.as_dataset(split=kaggle_set)
        total = int(dataset.cardinality())
        for batch in dataset.batch(batch_size).as_numpy_iterator():
            yield SourceBatch([image_id.decode() for image_id in batch['id']], batch['image'],
                              batch['label'].astype(np.int64), total if total >= 0 else None)


def make_source(config: ConvertConfig):
    """The source named by `--source`, with 'auto' resolved and logged; a
    Kaggle layout's archives start decompressing (KaggleLayout.start)."""
    name = _resolve_auto(config) if config.source == 'auto' else config.source
    if name in ('dir', 'kaggle'):
        layout = KaggleLayout(config.data_dir if name == 'dir'
                              else download_competition(config.download_dir))
        layout.start()
        return layout
    if name == 'tfds':
        return TfdsSource(config.tfds_data_dir)
    from cifar_tfrecord import sample  # Loads TensorFlow.
    return sample.SampleSource(
        config.sample_images_per_class, config.sample_test_images, config.seed)


def _resolve_auto(config: ConvertConfig) -> str:
    if config.data_dir:
        return 'dir'
    if (files.exists(os.path.join(config.download_dir, COMPETITION_ZIP))
            or kaggle_credentials_found()):
        return 'kaggle'
    logging.warning(
        'No --data_dir, no %s in %s and no Kaggle credentials: converting the '
        'generated offline sample (--source=sample), not CIFAR-10. See the README '
        'for the real data.', COMPETITION_ZIP, config.download_dir)
    return 'sample'
