"""Shared fixtures: small inputs written in the real formats.

Every input here is a real zip holding real 7z archives of real PNG files,
made by the same writer as the offline sample, so the converter reads them
exactly as it reads Kaggle's download.
"""

import csv
import importlib.util
import itertools
import os
import signal
import tempfile

# TensorFlow's C++ start-up log is noise in test output; the scripts hide it
# themselves (cifar_tfrecord/startup.py), but the tests import TensorFlow here.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import keras  # noqa: E402  (after the log level)
import pytest
import tensorflow as tf
from absl import flags

from cifar_tfrecord import convert
from cifar_tfrecord import run_folder
from cifar_tfrecord import sample
from cifar_tfrecord.config import ConvertConfig

# Two logical CPU devices, so multi-replica code runs here as on two GPUs.
# This must happen before TensorFlow initializes its devices.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_configure(config):
    # In the fast tier's several processes, each runs its ops on one thread:
    # the cores are shared out, not fought over (a test's wall time swung
    # from 3 to 35 s with what the other process ran). The slow tests train
    # for minutes, mostly tracing on one core: they keep TensorFlow's threads.
    if (int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')) > 1
            and config.getoption('markexpr') == 'not slow'):
        tf.config.threading.set_intra_op_parallelism_threads(1)


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPOSITORY, 'scripts')
SHARED_DATA = os.path.join(os.path.dirname(REPOSITORY), 'shared', 'data')

IMAGES_PER_CLASS = 6
TEST_IMAGES = 7

# scripts/train.py at test size: ResNet50 with random weights at 32 px and
# tiny batches, the real model and code paths at seconds per step on a CPU.
SMALL_TRAINING = ['--weights=none', '--image_size=32', '--batch_size=8', '--head_units=16',
                  '--warmup_epochs=0']


@pytest.fixture(scope='session')
def small_sample():
    """(train PNGs by id, class names by id, test PNGs by id), deterministic."""
    return sample.generate(IMAGES_PER_CLASS, TEST_IMAGES, seed=1)


@pytest.fixture
def kaggle_zip(tmp_path, small_sample):
    """A folder holding a small cifar-10.zip in Kaggle's layout."""
    train, labels, test = small_sample
    folder = tmp_path / 'data'
    folder.mkdir()
    sample.write_kaggle_zip(str(folder / 'cifar-10.zip'), train, sample.labels_csv(labels), test)
    return folder


@pytest.fixture(scope='session')
def sample_records(tmp_path_factory):
    """A records folder converted from a small generated sample. Read only."""
    output_dir = str(tmp_path_factory.mktemp('sample_records'))
    convert.convert(ConvertConfig(
        source='sample', output_dir=output_dir, sample_images_per_class=8,
        sample_test_images=12, num_shards=4, validation_fraction=0.25))
    return output_dir


# Flags the scripts defined; each script runs with only its own, as it would
# in a process of its own.
_SCRIPT_FLAGS = set()


def load_script(name: str):
    """Imports scripts/<name>.py afresh, so tests call its main with flags."""
    for flag_name in _SCRIPT_FLAGS:
        delattr(flags.FLAGS, flag_name)
    _SCRIPT_FLAGS.clear()
    defined_before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location(
        f'script_{name}', os.path.join(SCRIPTS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _SCRIPT_FLAGS.update(set(flags.FLAGS) - defined_before)
    return module


def run_script(name: str, *args: str) -> int:
    """Runs a script's main in this process, as its command line would.

    Returns:
        The exit status: 0 on success.
    """
    module = load_script(name)
    flags.FLAGS.unparse_flags()
    try:
        module.cli.run(module.main, argv=[f'{name}.py', *args])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def read_history(model_dir) -> list[dict]:
    """A run's history.csv, one dict per epoch."""
    with open(os.path.join(model_dir, run_folder.HISTORY)) as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope='session', autouse=True)
def _interruptible_processes():
    """Ctrl-C reaches the processes the tests start, however the suite was.

    A shell without job control starts a command run in the background
    (`bash scripts/test.sh &`) with SIGINT ignored, which every process it
    starts inherits, and Python then never raises KeyboardInterrupt: the
    Ctrl-C tests would see their processes carry on. A handler, unlike an
    ignored signal, is not inherited: this process's children start with
    SIGINT's default.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope='session', autouse=True)
def _temporary_files_under_pytest(tmp_path_factory):
    """Everything the tests, and the processes they start, write to a
    temporary folder lands under pytest's, never in the system's: the
    sample's folders, TensorFlow's autograph files."""
    folder = tmp_path_factory.mktemp('temporary')
    previous = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'] = tempfile.tempdir = str(folder)
    yield folder
    if previous[0] is None:
        del os.environ['TMPDIR']
    else:
        os.environ['TMPDIR'] = previous[0]
    tempfile.tempdir = previous[1]


# Each MirroredStrategy numbers its all-reduces from the same collective keys,
# and TensorFlow keeps each key's tensor shape for the life of the process:
# in a process that ran another strategy, an all-reduce of another shape
# fails ("Shape mismatch in the collective instance 100"). A process trains
# with one strategy; a test process runs many, so each gets keys of its own,
# the way TensorFlow's own tests do (the attribute is meant for tests).
_COLLECTIVE_KEY_BASES = itertools.count(start=1_000_000, step=100_000)


def use_new_collective_keys() -> None:
    """The MirroredStrategy made next numbers its collectives apart from any before."""
    tf.distribute.MirroredStrategy._collective_key_base = next(_COLLECTIVE_KEY_BASES)


@pytest.fixture(autouse=True)
def _collective_keys_apart():
    use_new_collective_keys()


@pytest.fixture(autouse=True)
def _reset_precision():
    """The mixed-precision policy is global: no test leaves one to the next."""
    yield
    keras.mixed_precision.set_global_policy('float32')
