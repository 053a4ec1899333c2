"""The 7z reader: its limits, its decoding by lzma, and its protocol with
the child process.

The child is replaced here by small Python programs (through
`archive._child_command`) that die, send garbage, or print on their own
output while serving: what the converter sees of each is one line naming
the archive, or, for the printing child, every file intact.
"""

import io
import os
import re
import struct
import sys
import textwrap
import zlib

import py7zr
import py7zr.io
import pytest

from cifar_tfrecord import archive
from cifar_tfrecord import sample
from cifar_tfrecord.errors import UserInputError

_LIMITS = archive.Limits(entry_bytes=1 << 20, entries=1000, total_bytes=1 << 26,
                         memory_bytes=1 << 30)
_LOCATION = 'data/train.7z'


@pytest.fixture
def small_7z(tmp_path, small_sample):
    """A real train.7z of the small sample's PNGs: (its path, {entry name: bytes})."""
    files = {f'train/{image_id}.png': png for image_id, png in small_sample[0].items()}
    path = tmp_path / 'train.7z'
    path.write_bytes(sample.make_7z(files, 'train'))
    return str(path), files


def _stream(path: str, limits: archive.Limits = _LIMITS) -> dict[str, bytes]:
    listed = []
    received = dict(archive.stream(path, None, _LOCATION, limits, listed.extend))
    assert sorted(listed) == sorted(received)
    return received


def test_archive_streams_every_file_intact(small_7z):
    path, files = small_7z
    assert _stream(path) == files


# ----------------------------------------------------------------------------
# Limits.


@pytest.mark.parametrize('limits, message', [
    (archive.Limits(entry_bytes=100, entries=1000, total_bytes=1 << 26, memory_bytes=1 << 30),
     r"entry 'train/\d+\.png' declares [\d,]+ bytes, more than the 100 a 32x32 PNG may take"),
    (archive.Limits(entry_bytes=1 << 20, entries=5, total_bytes=1 << 26, memory_bytes=1 << 30),
     'it holds 6[01] entries, more than the 5 a set may have'),
    (archive.Limits(entry_bytes=1 << 20, entries=1000, total_bytes=1000, memory_bytes=1 << 30),
     r'its entries declare [\d,]+ bytes in all, more than the 1,000 a set may take'),
])
def test_declared_sizes_over_a_limit_are_refused_before_decompressing(small_7z, limits,
                                                                       message):
    with pytest.raises(UserInputError, match=f'^{_LOCATION}: {message}$'):
        _stream(small_7z[0], limits)


def test_an_entry_growing_past_its_limit_is_stopped_whatever_its_header_declares():
    # py7zr writes no more of an entry than its header declares, so no
    # archive it reads can make an entry outgrow its declared size: a lying
    # header cannot be built to reach this guard through py7zr. The writes
    # py7zr would make are made here by hand.
    completed = []
    collector = archive._Collector('train/7.png', max_bytes=1000, declared_bytes=600,
                                   on_complete=lambda *entry: completed.append(entry))
    assert collector.write(b'\0' * 600) == 600
    with pytest.raises(archive._Refused) as refused:
        collector.write(b'\0' * 600)
    assert str(refused.value) == (
        "entry 'train/7.png' decompresses to more than the 1,000 bytes a 32x32 PNG may take "
        '(at least 1,200), though its header declares 600')
    assert collector.size() == 600  # The refused write was not kept.
    assert not completed


@pytest.mark.parametrize('filters, decoded', [
    (None, '101'),  # py7zr's default, LZMA2 after BCJ: decoded by lzma, a byte past the limit.
    ([{'id': py7zr.FILTER_BZIP2}], r'[\d,]+'),  # Extracted by py7zr.
])
def test_the_child_stops_a_growing_entry_even_unchecked_before(small_sample, tmp_path,
                                                                monkeypatch, filters, decoded):
    """The guard while decompressing, on py7zr's real writes or lzma's: with
    the check of declared sizes switched off, as if the header had declared
    less, an entry over the limit is still stopped, and reported in an ERROR
    frame; lzma decodes no more than a byte past the limit."""
    monkeypatch.setattr(archive, '_check_declared', lambda entries, limits: None)
    path = _write_7z(tmp_path, _sample_files(small_sample), filters)
    limits = archive.Limits(entry_bytes=100, entries=1000, total_bytes=1 << 26,
                            memory_bytes=1 << 30)
    kinds_and_payloads = _served(path, limits)
    assert [kind for kind, _ in kinds_and_payloads] == [archive.ENTRIES, archive.ERROR]
    assert re.fullmatch(
        r"entry 'train/\d+\.png' decompresses to more than the 100 bytes a 32x32 PNG may take "
        rf'\(at least {decoded}\), though its header declares [\d,]+', kinds_and_payloads[-1][1])


# ----------------------------------------------------------------------------
# The standard library's lzma decodes what it can, py7zr the rest.


def _sample_files(small_sample) -> dict[str, bytes]:
    """The small sample's train PNGs, with an empty file and a text file."""
    files = {f'train/{image_id}.png': png for image_id, png in small_sample[0].items()}
    return {**files, 'train/empty.png': b'', 'train/notes.txt': b'not an image\n' * 50}


def _write_7z(tmp_path, files: dict[str, bytes], filters: list[dict] | None = None,
              encoded_header: bool = True) -> str:
    path = tmp_path / 'train.7z'
    with py7zr.SevenZipFile(path, 'w', filters=filters) as seven_zip:
        seven_zip.set_encoded_header_mode(encoded_header)
        for name, data in files.items():
            seven_zip.writestr(data, name)
    return str(path)


def _served(path: str, limits: archive.Limits = _LIMITS) -> list[tuple[int, object]]:
    """The frames of the real child's work, done in this process."""
    frames = io.BytesIO()
    archive._serve(path, '', limits, frames)
    frames.seek(0)
    return list(archive._read_frames(frames, _LOCATION))


def _extracted_by_py7zr(path: str) -> dict[str, bytes]:
    factory = py7zr.io.BytesIOFactory(1 << 20)
    with py7zr.SevenZipFile(path) as seven_zip:
        seven_zip.extractall(factory=factory)
    return {name: product.read() for name, product in factory.products.items()}


def _refuse(*arguments, **keywords):
    raise AssertionError('the other decoder was used')


@pytest.mark.parametrize('filters', [
    None,  # py7zr's default, and Kaggle's: LZMA2 after x86 BCJ.
    [{'id': py7zr.FILTER_LZMA2, 'preset': 6}],
    [{'id': py7zr.FILTER_LZMA, 'preset': 6}],
])
def test_lzma_decodes_what_py7zr_extracts_file_by_file(small_sample, tmp_path, monkeypatch,
                                                         filters):
    path = _write_7z(tmp_path, _sample_files(small_sample), filters)
    expected = _extracted_by_py7zr(path)
    assert expected == _sample_files(small_sample)
    monkeypatch.setattr(py7zr.SevenZipFile, 'extractall', _refuse)
    assert _stream(path) == expected
    frames = _served(path)
    received = dict(item for kind, payload in frames if kind == archive.FILES for item in payload)
    assert received == expected
    assert frames[-1] == (archive.DONE, None)


@pytest.mark.parametrize('filters', [
    [{'id': py7zr.FILTER_BZIP2}],
    [{'id': py7zr.FILTER_DELTA}, {'id': py7zr.FILTER_LZMA2, 'preset': 6}],
    [{'id': py7zr.FILTER_ARM}, {'id': py7zr.FILTER_LZMA2, 'preset': 6}],
])
def test_other_coders_are_extracted_by_py7zr(small_sample, tmp_path, monkeypatch, filters):
    path = _write_7z(tmp_path, _sample_files(small_sample), filters)
    monkeypatch.setattr(archive, '_decode_lzma', _refuse)
    assert dict(item for kind, payload in _served(path) if kind == archive.FILES
                for item in payload) == _sample_files(small_sample)


def _packed_region(data: bytes) -> tuple[int, int]:
    """Where a 7z's packed streams are: from after its signature header to its header."""
    header_offset, = struct.unpack_from('<Q', data, 12)
    return 32, 32 + header_offset


def test_a_corrupt_stream_is_not_a_valid_7z_archive(small_sample, tmp_path):
    path = _write_7z(tmp_path, _sample_files(small_sample))
    data = bytearray(open(path, 'rb').read())
    start, end = _packed_region(data)
    middle = (start + end) // 2
    data[middle:middle + 64] = bytes(byte ^ 0x55 for byte in data[middle:middle + 64])
    open(path, 'wb').write(data)
    with pytest.raises(UserInputError,
                       match=f'^{_LOCATION}: not a valid 7z archive \\((LZMAError|Bad7zFile): '):
        _stream(path)


def test_a_stream_that_ends_early_is_not_a_valid_7z_archive(small_sample, tmp_path,
                                                            monkeypatch):
    """As if the packed stream were cut in half, its header as it was."""
    path = _write_7z(tmp_path, _sample_files(small_sample))
    decoded = archive._decoded
    monkeypatch.setattr(archive, '_decoded', lambda file, start, packed_bytes, filters:
                        decoded(file, start, packed_bytes // 2, filters))
    assert _served(path)[-1] == (archive.ERROR, 'not a valid 7z archive (EOFError: its '
                                 'compressed data ends before its files do)')


def test_a_file_whose_crc_is_wrong_is_refused(small_sample, tmp_path):
    files = _sample_files(small_sample)
    name, png = next(iter(files.items()))
    path = _write_7z(tmp_path, files, encoded_header=False)
    data = bytearray(open(path, 'rb').read())
    _, header_start = _packed_region(data)
    crc = struct.pack('<I', zlib.crc32(png))
    assert data.count(crc, header_start) == 1
    at = data.index(crc, header_start)
    data[at:at + 4] = struct.pack('<I', zlib.crc32(png) ^ 1)
    # The header's own CRC, and the signature header's, made right again.
    struct.pack_into('<I', data, 28, zlib.crc32(data[header_start:]))
    struct.pack_into('<I', data, 8, zlib.crc32(data[12:32]))
    open(path, 'wb').write(data)
    with pytest.raises(UserInputError, match=re.escape(
            f"{_LOCATION}: not a valid 7z archive (Bad7zFile: entry '{name}' fails its CRC-32 "
            'check)')):
        _stream(path)


def _children() -> set[int]:
    """The processes this one started that are still running."""
    children = set()
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as stat:
                fields = stat.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != 'Z':
            children.add(int(entry))
    return children


def test_the_child_starts_at_once_and_dies_with_its_stream(small_7z):
    before = _children()
    files = archive.stream(small_7z[0], None, _LOCATION, _LIMITS, lambda names: None)
    started = _children() - before
    assert len(started) == 1
    files.close()
    assert not started & _children()


# ----------------------------------------------------------------------------
# The protocol: a child that dies, or sends garbage, is named in one line.


def _fake_child(monkeypatch, code: str) -> None:
    """The 7z child becomes `code`, run with the frames' descriptor as argv[1]."""
    def command(path, member, frames_descriptor, limits):
        return [sys.executable, '-c', textwrap.dedent(code), str(frames_descriptor)]
    monkeypatch.setattr(archive, '_child_command', command)


_GARBAGE_CHILDREN = {
    'exits early': (
        'import sys; print("py7zr: something broke", file=sys.stderr); sys.exit(3)',
        'the 7z process died (exit status 3): py7zr: something broke'),
    'killed': (
        'import os, signal; os.kill(os.getpid(), signal.SIGKILL)',
        'the 7z process died (killed by SIGKILL)'),
    'unknown frame kind': (
        'import os, sys; os.write(int(sys.argv[1]), b"\\xc8\\0\\0\\0\\x05hello")',
        'the 7z process sent garbage (a frame of kind 200 and 5 bytes)'),
    'frame too long': (
        'import os, sys; os.write(int(sys.argv[1]), b"\\x02\\xff\\xff\\xff\\xff")',
        'the 7z process sent garbage (a frame of kind 2 and 4,294,967,295 bytes)'),
    'payload not a pickle': (
        'import os, sys; os.write(int(sys.argv[1]), b"\\x02\\0\\0\\0\\x05hello")',
        'the 7z process sent garbage (UnpicklingError)'),
    'frame cut short': (
        'import os, sys; os.write(int(sys.argv[1]), b"\\x02\\0\\0\\1\\0abc")',
        'the 7z process died (exit status 0)'),
    'no DONE': (
        'pass',
        'the 7z process died (exit status 0)'),
}


@pytest.mark.parametrize('case', sorted(_GARBAGE_CHILDREN))
def test_a_child_that_dies_or_sends_garbage_is_named_in_one_line(small_7z, monkeypatch, case):
    code, message = _GARBAGE_CHILDREN[case]
    _fake_child(monkeypatch, code)
    with pytest.raises(UserInputError) as error:
        _stream(small_7z[0])
    assert str(error.value) == f'{_LOCATION}: {message}'


# The real child, with py7zr's listing and extraction made to print, on
# stdout and stderr, bytes that are well-formed frames: a DONE frame, and a
# FILES frame with a file that is not in the archive. Printed before, between
# and after the child's own frames, from Python and from the file descriptors.
_PRINTING_CHILD = '''
    import atexit, os, pickle, runpy, struct, sys
    import py7zr

    _done = pickle.dumps(None)
    _DONE = struct.pack(">BI", 3, len(_done)) + _done
    _files = pickle.dumps([("train/999.png", b"junk")])
    _FILES = struct.pack(">BI", 2, len(_files)) + _files

    def junk(where):
        print(f"py7zr says hello from {where}")
        sys.stdout.flush()
        for descriptor in (1, 2):
            os.write(descriptor, _DONE + _FILES + b"\\n")

    def printing(method):
        def call(*arguments, **keywords):
            junk(method.__name__)
            result = method(*arguments, **keywords)
            junk(method.__name__ + " done")
            return result
        return call

    py7zr.SevenZipFile.list = printing(py7zr.SevenZipFile.list)
    py7zr.SevenZipFile.extractall = printing(py7zr.SevenZipFile.extractall)
    atexit.register(junk, "exit")
    junk("start")
    sys.argv = ["archive"] + sys.argv[1:]
    runpy.run_module("cifar_tfrecord.archive", run_name="__main__")
'''


def test_what_the_child_prints_never_reaches_the_frames(small_7z, monkeypatch):
    real_command = archive._child_command

    def printing_command(*arguments):
        # The real command's arguments, after the program that prints.
        return [sys.executable, '-c', textwrap.dedent(_PRINTING_CHILD),
                *real_command(*arguments)[3:]]

    monkeypatch.setattr(archive, '_child_command', printing_command)
    path, files = small_7z
    assert _stream(path) == files


def test_the_childs_output_is_kept_in_an_unlinked_file(small_7z, monkeypatch, tmp_path):
    """Nothing is left in the temporary folder, even by a child that dies."""
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path / 'temporary'))
    os.makedirs(tmp_path / 'temporary')
    _fake_child(monkeypatch, 'import sys; print("x" * 100_000); sys.exit(1)')
    with pytest.raises(UserInputError, match='died'):
        _stream(small_7z[0])
    assert not os.listdir(tmp_path / 'temporary')
