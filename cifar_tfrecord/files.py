"""Files, local or remote; written whole or not at all; JSON read back as dataclasses.

Local paths go through Python's own calls, remote ones (gs://, ram://)
through tf.io.gfile. Python's calls cost less per small file, and TensorFlow
is imported only when a remote path needs it, so the plots and the 7z
reader's child process start without it.

Every file a reader may open is written under a temporary name and renamed
into place (`write_atomically`, `save_atomically`), so a kill never leaves
half a file under its real name; `remove_partial_files` clears what a kill
left under the temporary one.
"""

import glob as glob_module
import json
import os
import shutil
from typing import Callable

from cifar_tfrecord import faults
from cifar_tfrecord import json_fields
from cifar_tfrecord.errors import UserInputError

PARTIAL = '.partial'
# Keras insists on these endings, so a temporary name keeps them.
_KEPT_ENDINGS = ('.weights.h5', '.keras')


def is_remote(path) -> bool:
    return '://' in os.fspath(path)


def gfile():
    import tensorflow as tf  # Seconds to import: only remote paths pay for it.
    return tf.io.gfile


def open_file(path, mode: str = 'rb'):
    """`open` for local paths, tf.io.gfile.GFile for remote ones."""
    return gfile().GFile(path, mode) if is_remote(path) else open(path, mode)


def exists(path: str) -> bool:
    return gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def size(path: str) -> int:
    return gfile().stat(path).length if is_remote(path) else os.path.getsize(path)


def listdir(path: str) -> list[str]:
    """The names in a folder, sorted; a subfolder's without gfile's trailing '/'."""
    names = gfile().listdir(path) if is_remote(path) else os.listdir(path)
    return sorted(name.rstrip('/') for name in names)


def glob(pattern: str) -> list[str]:
    """The paths a pattern matches, sorted."""
    return sorted(gfile().glob(pattern) if is_remote(pattern) else glob_module.glob(pattern))


def makedirs(path: str) -> None:
    if is_remote(path):
        gfile().makedirs(path)
    elif path:
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Removes a file or a whole folder."""
    if isdir(path):
        gfile().rmtree(path) if is_remote(path) else shutil.rmtree(path)
    elif is_remote(path):
        gfile().remove(path)
    else:
        os.remove(path)


def rename(source: str, target: str) -> None:
    """Moves `source` to `target`, replacing it."""
    if is_remote(source):
        gfile().rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def read_bytes(path: str) -> bytes:
    with open_file(path, 'rb') as file:
        return file.read()


def read_text(path: str) -> str:
    """A text file in UTF-8; one line naming it when it is not."""
    try:
        # utf-8-sig: a spreadsheet that re-saved the file may have added a BOM.
        return read_bytes(path).decode('utf-8-sig')
    except UnicodeDecodeError as error:
        raise UserInputError(f'{path} is not UTF-8 text: {error}') from None


def read_json(path: str):
    """The JSON value of a file; one line naming it when it is not JSON."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise UserInputError(f'{path} is not valid JSON: {error}') from None


def read_dataclass(path: str, fields_of):
    """The `fields_of` dataclass a JSON file holds, every key checked (`json_fields.parse`).

    Raises:
        UserInputError: naming the file, and the key at fault.
    """
    try:
        return json_fields.parse(read_json(path), fields_of)
    except json_fields.FieldError as error:
        raise UserInputError(f'{path}: {error}') from None


def partial_name(path: str) -> str:
    """The temporary name a file is written under before it is renamed into place."""
    for ending in _KEPT_ENDINGS:
        if path.endswith(ending):
            return path[:-len(ending)] + PARTIAL + ending
    return path + PARTIAL


def save_atomically(path: str, write: Callable[[str], None],
                    fault_point: str = 'inside_save') -> None:
    """`write(temporary_path)`, then the file renamed to `path`."""
    makedirs(os.path.dirname(path))
    temporary = partial_name(path)
    write(temporary)
    faults.reached(fault_point)  # Written whole, not yet in place.
    rename(temporary, path)


def write_atomically(path: str, data: bytes | str, fault_point: str = 'inside_save') -> None:
    """Writes `data` (text in UTF-8) to `path`, whole or not at all."""
    def write(temporary):
        with open_file(temporary, 'wb') as file:
            file.write(data.encode() if isinstance(data, str) else data)
    save_atomically(path, write, fault_point)


def write_dataclass(path: str, value) -> None:
    """A dataclass as the JSON that `read_dataclass` reads back, atomically."""
    write_atomically(path, json_fields.to_json(value))


def remove_partial_files(folder: str) -> None:
    """Removes what writes cut short left under their temporary names."""
    if isdir(folder):
        for name in listdir(folder):
            if PARTIAL in name:
                remove(os.path.join(folder, name))
