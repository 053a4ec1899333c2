"""7z archives, streamed from a child process that decompresses them.

The child starts when `stream` is called, and decompresses on a thread of its
own up to _AHEAD_FRAMES frames ahead of its reader: it works while the
converter does something else (TensorFlow loads, the other set converts), on
the other core. A folder whose coders are LZMA or LZMA2, alone or followed by
x86 BCJ (7-Zip's default, and Kaggle's), is decoded by the standard library's
lzma in a few large calls, and split by the header's sizes, CRC-32s checked;
any other goes through py7zr, which takes longer, most of it holding the GIL.

The child's frames go through a pipe of their own, `kind` (one byte) and
`length` (four bytes) then that many bytes of pickle: ENTRIES [(name,
declared size), ...] before decompressing anything, FILES [(name, bytes),
...] repeatedly, then DONE None or ERROR 'what'. What it prints goes to an
unlinked temporary file, read only to explain its death. It refuses an
archive whose header declares more than its `Limits`, and an entry that
grows past its limit whatever its header said; under RLIMIT_DATA, what no
check foresaw ends in a MemoryError, reported, not in a machine out of memory.
"""

import dataclasses
import lzma
import os
import pickle
import queue
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from typing import BinaryIO, Callable, Iterator

import py7zr
import py7zr.io
from py7zr.properties import COMPRESSION_METHOD

from cifar_tfrecord import errors
from cifar_tfrecord import faults
from cifar_tfrecord import files
from cifar_tfrecord.errors import UserInputError

# Files travel in batches: one frame per file would cost more than the file.
_BATCH = 1024
_BATCH_BYTES = 4 << 20
# Frames the child makes ahead of its reader: all of CIFAR-10's train set,
# at most 320 MB of batches that reach _BATCH_BYTES.
_AHEAD_FRAMES = 64
_HEADER = struct.Struct('>BI')
ENTRIES, FILES, DONE, ERROR = 1, 2, 3, 4
# Any frame: a batch, or the listing of the most entries `Limits` allows.
_MAX_FRAME_BYTES = 64 << 20
# The coders lzma decodes alone, as 7z method ids and lzma filter ids: one of
# these first, then at most one of the BCJ filters.
_LZMA_CODERS = {COMPRESSION_METHOD.LZMA2: lzma.FILTER_LZMA2,
                COMPRESSION_METHOD.LZMA: lzma.FILTER_LZMA1}
_BCJ_CODERS = {COMPRESSION_METHOD.P7Z_BCJ: lzma.FILTER_X86}
_READ_BYTES = 1 << 20  # Compressed bytes per read: few calls, and little memory.


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a 7z archive may hold, whatever its header says."""
    entry_bytes: int   # one entry, decompressed
    entries: int       # entries, folders included
    total_bytes: int   # all entries, decompressed
    memory_bytes: int  # the child's data segment (RLIMIT_DATA)


def stream(path: str, member: str | None, location: str, limits: Limits,
           check_names: Callable[[list[str]], None]) -> Iterator[tuple[str, bytes]]:
    """Yields `(entry name, bytes)` for each file of the 7z archive `path`,
    or of `member` of the zip `path`; `check_names` sees every entry name
    before anything is decompressed. Raises UserInputError naming `location`
    when the archive is corrupt or over its limits, or the child dies or
    sends garbage (a frame of an unknown kind, over _MAX_FRAME_BYTES, or not
    a pickle). The child starts at once: closing the iterator, or dropping
    it, kills it."""
    files = _stream(path, member, location, limits, check_names)
    next(files)  # Runs up to the child's start, inside the `finally` that kills it.
    return files


def _stream(path: str, member: str | None, location: str, limits: Limits,
            check_names: Callable[[list[str]], None]) -> Iterator[tuple[str, bytes] | None]:
    read_end, write_end = os.pipe()
    # The child's own output, kept in case it dies; unlinked, so never left behind.
    with tempfile.TemporaryFile() as output, os.fdopen(read_end, 'rb') as frames:
        try:
            child = subprocess.Popen(_child_command(path, member, write_end, limits),
                                     stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                     pass_fds=(write_end,))
        finally:
            os.close(write_end)  # Else the pipe never ends, even when the child dies.
        try:
            yield None
            for kind, payload in _read_frames(frames, location):
                if kind == ENTRIES:
                    check_names([name for name, _ in payload])
                elif kind == FILES:
                    faults.reached('archive_batch')
                    yield from payload
                elif kind == ERROR:
                    raise UserInputError(f'{location}: {payload}')
                else:
                    return
            raise UserInputError(f'{location}: {_death(child, output)}')
        finally:
            child.kill()
            child.wait()


def _child_command(path: str, member: str | None, frames_descriptor: int,
                   limits: Limits) -> list[str]:
    return [sys.executable, '-m', __name__, path, member or '', str(frames_descriptor),
            *(str(value) for value in dataclasses.astuple(limits))]


def _read_frames(frames: BinaryIO, location: str) -> Iterator[tuple[int, object]]:
    """Yields `(kind, payload)` of each frame, until the pipe ends or a frame is cut short."""
    while len(header := frames.read(_HEADER.size)) == _HEADER.size:
        kind, length = _HEADER.unpack(header)
        if kind not in (ENTRIES, FILES, DONE, ERROR) or length > _MAX_FRAME_BYTES:
            raise UserInputError(f'{location}: the 7z process sent garbage (a frame of kind '
                                 f'{kind} and {length:,} bytes)')
        payload = frames.read(length)
        if len(payload) < length:
            return
        try:
            yield kind, pickle.loads(payload)
        except Exception as error:  # Unpickling garbage raises many kinds.
            raise UserInputError(f'{location}: the 7z process sent garbage '
                                 f'({type(error).__name__})') from None


def _death(child: subprocess.Popen, output: BinaryIO) -> str:
    """Why the child stopped early, as one line."""
    status = child.wait()
    how = f'killed by {signal.Signals(-status).name}' if status < 0 else f'exit status {status}'
    output.seek(max(output.seek(0, os.SEEK_END) - 4096, 0))
    lines = output.read().decode(errors='replace').strip().splitlines()
    return f'the 7z process died ({how})' + (f': {lines[-1][:200]}' if lines else '')


class _Refused(Exception):
    """In the child: the archive is over a limit; the message says which, and by how much."""


class _Collector(py7zr.io.Py7zBytesIO):
    """Receives one entry from py7zr and hands it on when py7zr closes it."""

    def __init__(self, filename: str, max_bytes: int, declared_bytes: int | None,
                 on_complete: Callable[[str, bytes], None]):
        super().__init__(filename, max_bytes)
        self._declared_bytes = declared_bytes
        self._on_complete = on_complete

    def write(self, data) -> int:
        size = self._buffer.tell() + len(data)
        if size > self.limit:
            # py7zr stops at the declared size; this holds if it ever did not.
            declared = ('' if self._declared_bytes is None
                        else f', though its header declares {self._declared_bytes:,}')
            raise _Refused(f'entry {self.filename!r} decompresses to more than the '
                           f'{self.limit:,} bytes a 32x32 PNG may take (at least '
                           f'{size:,}){declared}')
        return self._buffer.write(data)

    def close(self) -> None:
        self._on_complete(self.filename, self._buffer.getvalue())


def _check_declared(entries: list[tuple[str, int]], limits: Limits) -> None:
    """Refuses an archive whose header declares more than `limits` allow."""
    if len(entries) > limits.entries:
        raise _Refused(f'it holds {len(entries):,} entries, more than the {limits.entries:,} '
                       'a set may have')
    for name, size in entries:
        if size > limits.entry_bytes:
            raise _Refused(f'entry {name!r} declares {size:,} bytes, more than the '
                           f'{limits.entry_bytes:,} a 32x32 PNG may take')
    total = sum(size for _, size in entries)
    if total > limits.total_bytes:
        raise _Refused(f'its entries declare {total:,} bytes in all, more than the '
                       f'{limits.total_bytes:,} a set may take')


def _open(path: str, member: str) -> BinaryIO:
    file = files.open_file(path)
    # zipfile stops at the member's declared size, and checks its CRC-32.
    return zipfile.ZipFile(file).open(member) if member else file


class _Sender(py7zr.io.WriterFactory):
    """Queues frames for the child's main thread to write, and batches into
    them the files of the _Collectors it makes for py7zr."""

    def __init__(self, limits: Limits):
        self._limits = limits
        self.declared = {}  # Entry name: size, as the header declares it.
        self.frames = queue.Queue(_AHEAD_FRAMES)  # Each frame's bytes, then None.
        self._pending, self._pending_bytes = [], 0
        self._lock = threading.Lock()  # py7zr may extract folders in threads.

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        return _Collector(filename, self._limits.entry_bytes, self.declared.get(filename),
                          self.add_file)

    def send(self, kind: int, payload) -> None:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > _MAX_FRAME_BYTES:
            raise _Refused(f'its listing takes {len(data):,} bytes, more than the '
                           f'{_MAX_FRAME_BYTES:,} this reader accepts')
        self.frames.put(_HEADER.pack(kind, len(data)) + data)

    def add_file(self, name: str, data: bytes) -> None:
        with self._lock:
            self._pending.append((name, data))
            self._pending_bytes += len(data)
            if len(self._pending) >= _BATCH or self._pending_bytes >= _BATCH_BYTES:
                self.flush_files()

    def flush_files(self) -> None:
        self.send(FILES, self._pending)
        self._pending, self._pending_bytes = [], 0


def _serve(path: str, member: str, limits: Limits, frames: BinaryIO) -> None:
    """Writes the archive's frames, decompressed on another thread: writing
    waits on the reader, decompressing only on the queue of frames ahead."""
    sender = _Sender(limits)
    threading.Thread(target=_decompress, args=(path, member, limits, sender),
                     daemon=True).start()  # Daemon: a reader gone ends the process.
    for frame in iter(sender.frames.get, None):
        frames.write(frame)


def _decompress(path: str, member: str, limits: Limits, sender: _Sender) -> None:
    try:
        with py7zr.SevenZipFile(_open(path, member)) as archive:
            entries = [(entry.filename, entry.uncompressed or 0) for entry in archive.list()]
            _check_declared(entries, limits)
            sender.send(ENTRIES, entries)
            sender.declared = dict(entries)
            chains = _lzma_chains(archive.header.main_streams)
            if chains is None:
                archive.extractall(factory=sender)
            else:
                _decode_lzma(archive, chains, sender)
        sender.flush_files()
    except _Refused as error:
        sender.send(ERROR, str(error))
    except MemoryError:
        sender.send(ERROR, f'reading it needs more than the {limits.memory_bytes:,} bytes of '
                           'memory allowed')
    except Exception as error:  # py7zr and its decompressors raise many kinds.
        sender.send(ERROR, f'not a valid 7z archive ({errors.describe(error)})')
    else:
        sender.send(DONE, None)
    finally:
        sender.frames.put(None)


def _lzma_chains(streams) -> list[list[dict]] | None:
    """Each folder's filters for lzma, when every folder is one packed stream
    through coders that lzma decodes alone (see _LZMA_CODERS); else None."""
    if streams is None:  # Empty files alone.
        return None
    chains = [_lzma_chain(folder) for folder in streams.unpackinfo.folders]
    return None if streams.packinfo.numstreams != len(chains) or None in chains else chains


def _lzma_chain(folder) -> list[dict] | None:
    coders = folder.coders
    # A chain: the packed stream into coder 0, each coder's output into the next.
    chained = (folder.packed_indices == [0] and all(map(folder.is_simple, coders))
               and [(bond.incoder, bond.outcoder) for bond in folder.bindpairs]
               == [(index + 1, index) for index in range(len(coders) - 1)])
    if (not chained or len(coders) > 2 or coders[0]['method'] not in _LZMA_CODERS
            or any(coder['method'] not in _BCJ_CODERS or coder['properties']
                   for coder in coders[1:])):
        return None
    # lzma lists filters in the order they encode: the reverse of 7z's.
    return [{'id': _BCJ_CODERS[coder['method']]} for coder in coders[1:]] + [
        lzma._decode_filter_properties(_LZMA_CODERS[coders[0]['method']],
                                       coders[0]['properties'] or b'')]


def _decode_lzma(archive: py7zr.SevenZipFile, chains: list[list[dict]], sender: _Sender) -> None:
    """Decodes each folder's solid stream and splits it by the header's sizes,
    in folder order, checking each file's CRC-32 where the header has one."""
    for entry in archive.files:
        if entry.emptystream and not entry.is_directory:
            sender.add_file(entry.filename, b'')
    streams = archive.header.main_streams
    packinfo = streams.packinfo
    for index, (folder, chain) in enumerate(zip(streams.unpackinfo.folders, chains)):
        start = archive.afterheader + packinfo.packpos + packinfo.packpositions[index]
        read = _decoded(archive.fp, start, packinfo.packsizes[index], chain)
        for entry in folder.files or ():
            collector = sender.create(entry.filename)
            # A byte over its limit at most, whatever its header says: the collector refuses it.
            data = read(min(entry.uncompressed, collector.limit + 1))
            collector.write(data)
            if entry.crc32 is not None and zlib.crc32(data) != entry.crc32:
                raise py7zr.Bad7zFile(f'entry {entry.filename!r} fails its CRC-32 check')
            collector.close()


def _decoded(file: BinaryIO, start: int, packed_bytes: int,
             filters: list[dict]) -> Callable[[int], bytes]:
    """The reader of a folder's stream: each call, its next `size` bytes
    decoded, and no more."""
    decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
    file.seek(start)
    unread = packed_bytes

    def read(size: int) -> bytes:
        nonlocal unread
        data = b''
        while len(data) < size:
            packed = b''
            if decompressor.needs_input:
                packed = file.read(min(unread, _READ_BYTES))
                unread -= len(packed)
                if not packed:
                    raise EOFError('its compressed data ends before its files do')
            data += decompressor.decompress(packed, size - len(data))
        return data
    return read


def _main(arguments: list[str]) -> None:
    path, member, descriptor, *numbers = arguments
    limits = Limits(*(int(number) for number in numbers))
    # Ctrl-C reaches the whole process group: the converter stops this
    # process itself, and reports the interruption in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limits.memory_bytes if hard == resource.RLIM_INFINITY else min(hard, limits.memory_bytes)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    try:
        with os.fdopen(int(descriptor), 'wb') as frames:
            _serve(path, member, limits, frames)
    except BrokenPipeError:
        pass  # The reader stopped early, on an error of its own.


if __name__ == '__main__':
    _main(sys.argv[1:])
