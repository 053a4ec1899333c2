"""7z archives, streamed from a child process.

py7zr spends most of its time in Python, holding the GIL. Run in the
converter's process, it would take turns with decoding and writing; run in a
child process, it keeps one core busy while the converter uses the other.
The child imports only py7zr (and TensorFlow's file system only for remote
paths), so it starts in a fraction of a second.

Protocol on the child's stdout, one pickle after another:
    ('names', [entry names])  before anything is decompressed
    ('files', [(name, bytes), ...])  repeatedly
    ('done', None) | ('error', message)
"""

import pickle
import signal
import subprocess
import sys
from typing import BinaryIO, Callable, Iterator

import py7zr
import py7zr.io

from cifar_tfrecord import faults
from cifar_tfrecord import files

# Files travel in batches: one pickle per file would cost more than the file.
_BATCH = 256


def stream(path: str, member: str | None, location: str,
           check_names: Callable[[list[str]], None]) -> Iterator[tuple[str, bytes]]:
    """Yields `(entry name, bytes)` for each file of a 7z archive.

    Args:
        path: the .7z file, or the zip that holds it as `member`.
        member: the archive's name inside the zip, or None.
        location: how error messages name the archive.
        check_names: called with every entry name before decompression.
    """
    command = [sys.executable, '-m', __name__, path, member or '']
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        while True:
            kind, payload = pickle.load(child.stdout)
            if kind == 'names':
                check_names(payload)
            elif kind == 'files':
                faults.reached('archive_batch')
                yield from payload
            elif kind == 'error':
                raise ArchiveError(f'{location}: {payload}')
            else:
                return
    except EOFError:
        raise ArchiveError(f'{location}: the decompressing process died') from None
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


class ArchiveError(Exception):
    """The archive is corrupt, or not a 7z archive."""


class _Collector(py7zr.io.Py7zIO):
    """Receives one entry from py7zr and hands it on when it is complete."""

    def __init__(self, filename: str, on_complete: Callable[[str, bytes], None]):
        self.filename = filename
        self._on_complete = on_complete
        self._chunks = []
        self._size = 0

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._size += len(data)
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
    def __init__(self, on_complete: Callable[[str, bytes], None]):
        self._on_complete = on_complete

    def create(self, filename: str) -> py7zr.io.Py7zIO:
        return _Collector(filename, self._on_complete)


def _open(path: str, member: str) -> BinaryIO:
    file = files.open_file(path)
    if not member:
        return file
    import zipfile
    return zipfile.ZipFile(file).open(member)


def _serve(path: str, member: str, output: BinaryIO) -> None:
    pending = []

    def send(kind, payload):
        pickle.dump((kind, payload), output, protocol=pickle.HIGHEST_PROTOCOL)

    def on_complete(name: str, data: bytes) -> None:
        pending.append((name, data))
        if len(pending) >= _BATCH:
            send('files', pending.copy())
            pending.clear()

    try:
        with py7zr.SevenZipFile(_open(path, member)) as archive:
            send('names', archive.getnames())
            archive.extractall(factory=_CollectorFactory(on_complete))
    except (py7zr.exceptions.ArchiveError, py7zr.Bad7zFile, EOFError, OSError, ValueError) as error:
        send('error', f'not a valid 7z archive ({type(error).__name__}: {error})')
        return
    send('files', pending)
    send('done', None)


if __name__ == '__main__':
    # Ctrl-C reaches the whole process group: the converter stops this
    # process itself, and reports the interruption in one line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(sys.argv[1], sys.argv[2], sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        pass  # The reader stopped early, on an error of its own.
