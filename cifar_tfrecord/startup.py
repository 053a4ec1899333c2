"""TensorFlow's start-up log, hidden from a script's output unless asked for.

Every command would otherwise open with TensorFlow's start-up chatter (the
oneDNN notice, `failed call to cuInit`), none of it about the command.
`cli.run` calls `quiet_tensorflow`; importing the package changes nothing.
Three sources:

- C++ messages obey `TF_CPP_MIN_LOG_LEVEL`, read when TensorFlow loads;
- TensorFlow's Python logger;
- messages logged while its shared libraries load, before absl's C++ logging
  is initialized, obey no setting: `import tensorflow` runs with the standard
  error file captured, and all but C++ log lines below the level (and absl's
  notice of them) go back out.

`CIFAR_TFRECORD_VERBOSE=1`, or absl's `--verbosity=1` (or higher) on the
command line, leaves TensorFlow's logging as it is.
"""

import contextlib
import glob
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile

VERBOSE_VARIABLE = 'CIFAR_TFRECORD_VERBOSE'
LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
# Device nodes of NVIDIA GPUs and of Cloud TPUs.
ACCELERATOR_DEVICES = ('/dev/nvidia[0-9]*', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')

# The C++ log prefix: severity, date, time (before absl's logging is set up,
# seconds since 1970), thread, file:line].
_CPP_LOG_LINE = re.compile(rb'^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s\]]+:\d+\] ')
_SEVERITIES = b'IWEF'
_PRE_INIT_NOTICE = b'WARNING: All log messages before absl::InitializeLog() is called'


def quiet_tensorflow(environ=os.environ, argv: list[str] | None = None) -> bool:
    """Hides TensorFlow's start-up log, if called before it loads, unless verbose
    output was asked for: then returns False, having changed nothing."""
    if environ.get(VERBOSE_VARIABLE, '') not in ('', '0') or verbosity_requested(
            sys.argv if argv is None else argv):
        return False
    # Unless the user set it: 2 where a GPU or TPU device node exists, whose
    # C++ ERROR lines are how cuDNN, NCCL or XLA failures show; 3 elsewhere,
    # where the one ERROR line is cuInit's expected failure.
    accelerated = any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)
    environ.setdefault(LEVEL_VARIABLE, '2' if accelerated else '3')
    # Its Python INFO lines ('Assets written to') are about its internals too.
    logging.getLogger('tensorflow').setLevel(logging.WARNING)
    level = int(environ[LEVEL_VARIABLE]) if environ[LEVEL_VARIABLE].isdigit() else 0
    installed = any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path)
    if level > 0 and 'tensorflow' not in sys.modules and not installed:
        sys.meta_path.insert(0, _QuietTensorFlowFinder(level))
    return True


def verbosity_requested(argv: list[str]) -> bool:
    """Whether the command line sets absl's --verbosity (or -v) to 1 or more."""
    arguments = argv[1:argv.index('--')] if '--' in argv else argv[1:]
    for index, argument in enumerate(arguments):
        name, equals, value = argument.lstrip('-').partition('=')
        if argument.startswith('-') and name in ('verbosity', 'v'):
            value = value if equals else next(iter(arguments[index + 1:]), '')
            return value.lstrip('-').isdigit() and int(value) >= 1
    return False


def is_noise(line: bytes, level: int) -> bool:
    """Whether a line written while TensorFlow loads is start-up log to hide."""
    if line.startswith(_PRE_INIT_NOTICE):
        return level >= 1
    match = _CPP_LOG_LINE.match(line)
    return bool(match) and _SEVERITIES.index(match.group(1)) < level


@contextlib.contextmanager
def _filtered_stderr(level: int):
    """Captures the standard error file and writes it back without the noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No standard error file: nothing to filter.
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            os.write(2, b''.join(line for line in captured.read().splitlines(keepends=True)
                                 if not is_noise(line, level)))


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the tensorflow package on sys.path, and loads it with its own
    loader, its start-up noise filtered out."""

    def __init__(self, level: int):
        self._level = level
        self._loader = None

    def find_spec(self, fullname, path, target=None):
        spec = (importlib.machinery.PathFinder.find_spec(fullname, path, target)
                if fullname == 'tensorflow' else None)
        if spec is not None and spec.loader is not None:
            self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Once is enough: the package is loading, and goes on with its own loader.
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        module.__loader__ = module.__spec__.loader = self._loader
        with _filtered_stderr(self._level):
            self._loader.exec_module(module)
