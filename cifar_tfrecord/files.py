"""Files, local or remote: Python's own calls for local paths, tf.io.gfile
for gs://, ram:// and the like.

Python's calls cost less than gfile's per small file, and TensorFlow is
imported only when a remote path needs it, so the plots and the 7z reader's
child process start without it.
"""

import os


def is_remote(path) -> bool:
    return '://' in os.fspath(path)


def gfile():
    import tensorflow as tf  # Seconds to import: only remote paths pay for it.
    return tf.io.gfile


def open_file(path, mode: str = 'rb'):
    """`open` for local paths, tf.io.gfile.GFile for remote ones."""
    return gfile().GFile(path, mode) if is_remote(path) else open(path, mode)
