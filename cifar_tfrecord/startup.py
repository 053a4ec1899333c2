"""TensorFlow's C++ start-up log, hidden unless asked for.

Every command would otherwise open with TensorFlow's start-up chatter (the
oneDNN notice, `Could not find cuda drivers`, `failed call to cuInit` on a
machine without a GPU), none of it about the command. Three sources:

- Messages logged once TensorFlow's logging is set up obey
  `TF_CPP_MIN_LOG_LEVEL`, which must be set before TensorFlow loads: this
  module sets it to 3 (fatal only) unless the user set it.
- TensorFlow's Python logger, below WARNING.
- Messages logged while its shared libraries load, before absl's C++ logging
  is initialized, obey no setting (`WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR`). They are written
  while `import tensorflow` runs, so that import runs with the standard error
  file captured, and the captured lines go back out except the C++ log lines
  below the same level, and absl's notice.

`CIFAR_TFRECORD_VERBOSE=1` in the environment, or absl's `--verbosity=1` (or
higher) on the command line, leaves TensorFlow's logging as it is.
"""

import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile

VERBOSE_VARIABLE = 'CIFAR_TFRECORD_VERBOSE'
LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
QUIET_LEVEL = '3'

# The C++ log prefix: severity, date, time (before absl's logging is set up,
# seconds since 1970), thread, file:line].
_CPP_LOG_LINE = re.compile(rb'^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s\]]+:\d+\] ')
_SEVERITIES = b'IWEF'
_PRE_INIT_NOTICE = b'WARNING: All log messages before absl::InitializeLog() is called'


def quiet_tensorflow(environ=os.environ, argv: list[str] | None = None) -> bool:
    """Hides TensorFlow's C++ start-up log unless verbose output was asked for.

    Call before TensorFlow is imported (`environ` and `argv`, by default
    this process's, are what to read and set). Returns False when verbose
    output was asked for, and nothing was changed.
    """
    argv = sys.argv if argv is None else argv
    if environ.get(VERBOSE_VARIABLE, '') not in ('', '0') or verbosity_requested(argv):
        return False
    environ.setdefault(LEVEL_VARIABLE, QUIET_LEVEL)
    # TensorFlow's Python INFO lines (a SavedModel's 'Assets written to',
    # 'Sharding callback duration') are about its internals too.
    logging.getLogger('tensorflow').setLevel(logging.WARNING)
    level = _level(environ[LEVEL_VARIABLE])
    installed = any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path)
    if level > 0 and 'tensorflow' not in sys.modules and not installed:
        sys.meta_path.insert(0, _QuietTensorFlowFinder(level))
    return True


def verbosity_requested(argv: list[str]) -> bool:
    """Whether the command line sets absl's --verbosity (or -v) to 1 or more."""
    arguments = argv[1:argv.index('--')] if '--' in argv else argv[1:]
    for index, argument in enumerate(arguments):
        name, equals, value = argument.lstrip('-').partition('=')
        if not argument.startswith('-') or name not in ('verbosity', 'v'):
            continue
        if not equals:
            value = arguments[index + 1] if index + 1 < len(arguments) else ''
        try:
            return int(value) >= 1
        except ValueError:
            return False
    return False


def is_noise(line: bytes, level: int) -> bool:
    """Whether a line written while TensorFlow loads is start-up log to hide."""
    if line.startswith(_PRE_INIT_NOTICE):
        return level >= 1
    match = _CPP_LOG_LINE.match(line)
    return bool(match) and _SEVERITIES.index(match.group(1)) < level


def _level(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


@contextlib.contextmanager
def _filtered_stderr(level: int):
    """Captures the standard error file and writes it back without the noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No standard error file: nothing to filter.
        yield
        return
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                kept = [line for line in captured.read().splitlines(keepends=True)
                        if not is_noise(line, level)]
                if kept:
                    os.write(2, b''.join(kept))
    finally:
        os.close(saved)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds the tensorflow package for the next finders, with a loader that
    imports it with its start-up noise filtered out."""

    def __init__(self, level: int):
        self._level = level

    def find_spec(self, fullname, path, target=None):
        if fullname != 'tensorflow':
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader, self, self._level)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder: _QuietTensorFlowFinder, level: int):
        self._loader = loader
        self._finder = finder
        self._level = level

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Once is enough: the package is loading, and the module goes on
        # with its own loader.
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        module.__loader__ = module.__spec__.loader = self._loader
        with _filtered_stderr(self._level):
            self._loader.exec_module(module)
