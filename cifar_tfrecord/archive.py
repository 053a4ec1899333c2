"""7z archives, streamed from a child process.

py7zr spends most of its time in Python, holding the GIL. Run in the
converter's process, it would take turns with decoding and writing; run in a
child process, it keeps one core busy while the converter uses the other.
The child imports only py7zr (and TensorFlow's file system only for remote
paths), so it starts in a fraction of a second.

Protocol. The child writes frames to a pipe of their own, whose descriptor
it is given, never to its standard output: whatever py7zr, Python or a
library prints goes to the child's stdout and stderr, which the converter
keeps in a temporary file, unlinked, and reads only to explain a death. A
frame is a header, `kind` (one byte) and `length` (four bytes), then
`length` bytes of pickle:

    ENTRIES [(entry name, declared size), ...]   before anything is decompressed
    FILES   [(entry name, bytes), ...]           repeatedly
    DONE    None, or ERROR 'what is wrong'       last

The converter checks each header before it reads the payload: an unknown
kind or a length over _MAX_FRAME_BYTES, like a payload that does not
unpickle, is garbage, and reported in one line naming the archive.

Memory. The child refuses, before decompressing anything, an archive whose
header declares an entry, an entry count or a total over its `Limits`; while
decompressing, an entry that grows past its limit whatever its header said;
and it runs under RLIMIT_DATA, so what no check foresaw (a header that
decompresses to gigabytes) ends in MemoryError, reported, not in a machine
out of memory. Files travel in batches of at most _BATCH files and about
_BATCH_BYTES.
"""

import dataclasses
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from typing import BinaryIO, Callable, Iterator

import py7zr
import py7zr.io

from cifar_tfrecord import errors
from cifar_tfrecord import faults
from cifar_tfrecord import files

# Files travel in batches: one frame per file would cost more than the file.
_BATCH = 256
_BATCH_BYTES = 4 << 20
_HEADER = struct.Struct('>BI')
ENTRIES, FILES, DONE, ERROR = 1, 2, 3, 4
# Any frame: a batch, or the listing of the most entries `Limits` allows.
_MAX_FRAME_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a 7z archive may hold, whatever its header says."""
    entry_bytes: int   # one entry, decompressed
    entries: int       # entries, folders included
    total_bytes: int   # all entries, decompressed
    memory_bytes: int  # the child's data segment (RLIMIT_DATA)


class ArchiveError(Exception):
    """The archive is corrupt, not a 7z archive, or over its limits; or the
    process reading it died."""


def stream(path: str, member: str | None, location: str, limits: Limits,
           check_names: Callable[[list[str]], None]) -> Iterator[tuple[str, bytes]]:
    """Yields `(entry name, bytes)` for each file of a 7z archive.

    Args:
        path: the .7z file, or the zip that holds it as `member`.
        member: the archive's name inside the zip, or None.
        location: how error messages name the archive.
        limits: what the archive may hold.
        check_names: called with every entry name before decompression.
    """
    # The child's own output, kept in case it dies; unlinked, so never left behind.
    output = tempfile.TemporaryFile()
    read_end, write_end = os.pipe()
    frames = os.fdopen(read_end, 'rb')
    try:
        child = subprocess.Popen(_child_command(path, member, write_end, limits),
                                 stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                 pass_fds=(write_end,))
    except BaseException:
        frames.close()
        output.close()
        raise
    finally:
        os.close(write_end)  # Else the pipe never ends, even when the child dies.
    try:
        yield from _received_files(frames, location, check_names)
    except _ChildEnded:
        raise ArchiveError(f'{location}: {_death(child, output)}') from None
    finally:
        child.kill()
        child.wait()
        frames.close()
        output.close()


def _child_command(path: str, member: str | None, frames_descriptor: int,
                   limits: Limits) -> list[str]:
    return [sys.executable, '-m', __name__, path, member or '', str(frames_descriptor),
            *(str(value) for value in dataclasses.astuple(limits))]


def _received_files(frames: BinaryIO, location: str, check_names: Callable[[list[str]], None]
                    ) -> Iterator[tuple[str, bytes]]:
    for kind, payload in _read_frames(frames, location):
        if kind == ENTRIES:
            check_names([name for name, _ in payload])
        elif kind == FILES:
            faults.reached('archive_batch')
            yield from payload
        elif kind == ERROR:
            raise ArchiveError(f'{location}: {payload}')
        else:
            return
    raise _ChildEnded()


class _ChildEnded(Exception):
    """The frames ended before DONE or ERROR."""


def _read_frames(frames: BinaryIO, location: str) -> Iterator[tuple[int, object]]:
    """Yields `(kind, payload)` of each frame, until the pipe ends."""
    while header := frames.read(_HEADER.size):
        if len(header) < _HEADER.size:
            raise _ChildEnded()
        kind, length = _HEADER.unpack(header)
        if kind not in (ENTRIES, FILES, DONE, ERROR) or length > _MAX_FRAME_BYTES:
            raise ArchiveError(f'{location}: the 7z process sent garbage (a frame of kind '
                               f'{kind} and {length:,} bytes)')
        payload = frames.read(length)
        if len(payload) < length:
            raise _ChildEnded()
        try:
            yield kind, pickle.loads(payload)
        except Exception as error:  # Unpickling garbage raises many kinds.
            raise ArchiveError(f'{location}: the 7z process sent garbage '
                               f'({type(error).__name__})') from None


def _death(child: subprocess.Popen, output: BinaryIO) -> str:
    """Why the child stopped early, as one line."""
    status = child.wait()
    if status < 0:
        how = f'killed by {signal.Signals(-status).name}'
    else:
        how = f'exit status {status}'
    output.seek(0, os.SEEK_END)
    output.seek(max(output.tell() - 4096, 0))
    lines = output.read().decode(errors='replace').strip().splitlines()
    return f'the 7z process died ({how})' + (f': {lines[-1][:200]}' if lines else '')


# ----------------------------------------------------------------------------
# The child.


class _Refused(Exception):
    """The archive is over a limit; the message says which, and by how much."""


class _Collector(py7zr.io.Py7zIO):
    """Receives one entry from py7zr and hands it on when it is complete."""

    def __init__(self, filename: str, max_bytes: int, declared_bytes: int | None,
                 on_complete: Callable[[str, bytes], None]):
        self.filename = filename
        self._max_bytes = max_bytes
        self._declared_bytes = declared_bytes
        self._on_complete = on_complete
        self._chunks = []
        self._size = 0

    def write(self, data) -> int:
        self._size += len(data)
        if self._size > self._max_bytes:
            # py7zr stops at the declared size; this holds if it ever did not.
            declared = ('' if self._declared_bytes is None
                        else f', though its header declares {self._declared_bytes:,}')
            raise _Refused(f'entry {self.filename!r} decompresses to more than the '
                           f'{self._max_bytes:,} bytes a 32x32 PNG may take (at least '
                           f'{self._size:,}){declared}')
        self._chunks.append(bytes(data))
        return len(data)

    def read(self, size=None) -> bytes:
        return b''.join(self._chunks)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def seekable(self) -> bool:
        return False  # py7zr then does not rewind us before close().

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        self._on_complete(self.filename, b''.join(self._chunks))


class _CollectorFactory(py7zr.io.WriterFactory):
    def __init__(self, max_bytes: int, declared: dict[str, int],
                 on_complete: Callable[[str, bytes], None]):
        self._max_bytes = max_bytes
        self._declared = declared
        self._on_complete = on_complete

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        return _Collector(filename, self._max_bytes, self._declared.get(filename),
                          self._on_complete)


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
    if not member:
        return file
    import zipfile
    # zipfile stops at the member's declared size, and checks its CRC-32.
    return zipfile.ZipFile(file).open(member)


class _Sender:
    """Writes frames, and batches files into them."""

    def __init__(self, frames: BinaryIO):
        self._frames = frames
        self._pending = []
        self._pending_bytes = 0
        self._lock = threading.Lock()  # py7zr may extract folders in threads.

    def send(self, kind: int, payload) -> None:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > _MAX_FRAME_BYTES:
            raise _Refused(f'its listing takes {len(data):,} bytes, more than the '
                           f'{_MAX_FRAME_BYTES:,} this reader accepts')
        self._frames.write(_HEADER.pack(kind, len(data)))
        self._frames.write(data)

    def add_file(self, name: str, data: bytes) -> None:
        with self._lock:
            self._pending.append((name, data))
            self._pending_bytes += len(data)
            if len(self._pending) >= _BATCH or self._pending_bytes >= _BATCH_BYTES:
                self.flush_files()

    def flush_files(self) -> None:
        self.send(FILES, self._pending)
        self._pending = []
        self._pending_bytes = 0


def _serve(path: str, member: str, limits: Limits, frames: BinaryIO) -> None:
    sender = _Sender(frames)
    try:
        with py7zr.SevenZipFile(_open(path, member)) as archive:
            entries = [(entry.filename, entry.uncompressed or 0) for entry in archive.list()]
            _check_declared(entries, limits)
            sender.send(ENTRIES, entries)
            archive.extractall(factory=_CollectorFactory(
                limits.entry_bytes, dict(entries), sender.add_file))
        sender.flush_files()
    except _Refused as error:
        sender.send(ERROR, str(error))
        return
    except MemoryError:
        sender.send(ERROR, f'reading it needs more than the {limits.memory_bytes:,} bytes of '
                           'memory allowed')
        return
    except Exception as error:  # py7zr and its decompressors raise many kinds.
        sender.send(ERROR, f'not a valid 7z archive ({errors.describe(error)})')
        return
    sender.send(DONE, None)


def _main(arguments: list[str]) -> None:
    path, member, descriptor, *numbers = arguments
    limits = Limits(*(int(number) for number in numbers))
    # Ctrl-C reaches the whole process group: the converter stops this
    # process itself, and reports the interruption in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (
        limits.memory_bytes if hard == resource.RLIM_INFINITY else min(hard, limits.memory_bytes),
        hard))
    try:
        with os.fdopen(int(descriptor), 'wb') as frames:
            _serve(path, member, limits, frames)
    except BrokenPipeError:
        pass  # The reader stopped early, on an error of its own.


if __name__ == '__main__':
    _main(sys.argv[1:])
