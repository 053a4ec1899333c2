"""TensorFlow's start-up log: hidden by default, back on request; every
script's --help and a failing command print only the project's lines."""

import ast
import logging
import os
import re
import subprocess
import sys

import pytest

from cifar_tfrecord import startup
from conftest import REPOSITORY, SCRIPTS

# What TensorFlow 2.21 writes while it loads, on this CPU-only machine.
NOISE = [
    b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n',
    b'I0000 00:00:1796024426.699390   23303 port.cc:153] oneDNN custom operations are on.\n',
    b'I0000 00:00:1796024426.699679   23303 cudart_stub.cc:31] Could not find cuda drivers on '
    b'your machine, GPU will not be used.\n',
    b'W0000 00:00:1796024426.754733   23303 some_file.cc:7] a warning\n',
    b'E0000 00:00:1796024508.991985   24700 cuda_platform.cc:52] failed call to cuInit: '
    b'INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n',
]
OWN_LINES = [b'<string>:6: UserWarning: a Python warning\n', b'error: a line of ours\n']


@pytest.mark.parametrize('level, kept', [(3, []), (2, NOISE[4:]), (1, NOISE[3:])])
def test_the_start_up_lines_below_the_level_are_dropped_and_others_kept(capfd, level, kept):
    with startup._filtered_stderr(level):
        for line in NOISE[:3] + OWN_LINES[:1] + NOISE[3:] + OWN_LINES[1:]:
            os.write(2, line)
    assert capfd.readouterr().err.encode() == b''.join(
        OWN_LINES[:1] + kept + OWN_LINES[1:])


def test_quiet_by_default_without_overriding_the_user(monkeypatch):
    logger = logging.getLogger('tensorflow')
    monkeypatch.setattr(logger, 'level', logging.NOTSET)
    environ = {}
    assert startup.quiet_tensorflow(environ, ['train.py', '--batch_size=8'])
    assert environ == {'TF_CPP_MIN_LOG_LEVEL': '3'}
    assert logger.level == logging.WARNING  # TensorFlow's Python INFO lines too.
    environ = {'TF_CPP_MIN_LOG_LEVEL': '1'}
    assert startup.quiet_tensorflow(environ, ['train.py'])
    assert environ == {'TF_CPP_MIN_LOG_LEVEL': '1'}


@pytest.mark.parametrize('environ, argv', [
    ({'CIFAR_TFRECORD_VERBOSE': '1'}, ['train.py']),
    ({}, ['train.py', '--verbosity=1']),
    ({}, ['train.py', '-v', '2']),
    ({}, ['launch_local.py', '--verbosity=1', '--', '--batch_size=8']),
])
def test_verbose_output_leaves_tensorflow_as_it_is(environ, argv):
    given = dict(environ)
    assert not startup.quiet_tensorflow(environ, argv)
    assert environ == given


@pytest.mark.parametrize('argv', [
    ['train.py', '--verbosity=0'], ['train.py', '--verbosity=-1'],
    ['launch_local.py', '--', '--verbosity=1'], ['train.py', '--verbosity=debug']])
def test_verbosity_below_one_or_not_ours_is_not_verbose(argv):
    assert not startup.verbosity_requested(argv)


# ----------------------------------------------------------------------------
# Real processes: each script's --help, and a command that fails.

SCRIPT_NAMES = sorted(name[:-3] for name in os.listdir(SCRIPTS) if name.endswith('.py'))

# Runs every script given, one after the other, as `python <script> --help`
# would (the first to import TensorFlow makes the start-up log), and names
# the flags absl files under the script.
_HELP_OF_EACH_SCRIPT = """
import runpy, sys
from absl import app, flags
app.define_help_flags()
for path in sys.argv[1:]:
    defined = set(flags.FLAGS)
    sys.argv = [path, '--help']
    try:
        runpy.run_path(path, run_name='__main__')
        status = 'no exit'
    except SystemExit as exit_:
        status = exit_.code
    own = sorted(flag.name for flag in flags.FLAGS.get_flags_for_module(path))
    for name in set(flags.FLAGS) - defined:
        delattr(flags.FLAGS, name)
    print(f'@@ {path} exit {status} defining {",".join(own)}', flush=True)
"""


def _start(*arguments: str) -> subprocess.Popen:
    # As a user's shell would have it: without the TF_CPP_MIN_LOG_LEVEL that
    # scripts/setup_venv.sh exports for the tests, or this process's own.
    environ = {name: value for name, value in os.environ.items()
               if name not in (startup.LEVEL_VARIABLE, startup.VERBOSE_VARIABLE)}
    return subprocess.Popen([sys.executable, *arguments], cwd=REPOSITORY, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_help_and_errors_print_only_the_projects_lines():
    paths = [os.path.join(SCRIPTS, f'{name}.py') for name in SCRIPT_NAMES]
    helps = _start('-c', _HELP_OF_EACH_SCRIPT, *paths)
    failing = _start(paths[SCRIPT_NAMES.index('train')], '--records_dir=/nowhere')

    output, errors = helps.communicate(timeout=300)
    assert helps.returncode == 0, errors
    assert errors == ''
    texts = re.split(r'^@@ (\S+) exit (.*) defining (.*)$', output, flags=re.MULTILINE)
    assert texts[1::4] == paths
    assert texts[2::4] == ['0'] * len(paths)
    for path, text, defined in zip(paths, texts[0::4], texts[3::4]):
        listed = re.findall(r'^  --(?:\[no\])?(\w+): ', text, re.MULTILINE)
        assert listed and sorted(listed) == defined.split(','), path  # The script's flags.

    output, errors = failing.communicate(timeout=300)
    assert failing.returncode == 1
    assert output == ''
    assert errors.splitlines() == [
        'error: /nowhere/manifest.json not found: /nowhere holds no finished records '
        '(run scripts/convert.py first)']


@pytest.mark.parametrize('name', SCRIPT_NAMES)
def test_scripts_import_the_package_before_tensorflow(name):
    """The package hides the start-up log only if it loads first."""
    with open(os.path.join(SCRIPTS, f'{name}.py')) as file:
        tree = ast.parse(file.read())
    imported = [alias.name if isinstance(statement, ast.Import) else statement.module
                for statement in tree.body if isinstance(statement, (ast.Import, ast.ImportFrom))
                for alias in statement.names]
    packages = [module.split('.')[0] for module in imported]
    heavy = [index for index, package in enumerate(packages) if package in ('tensorflow', 'keras')]
    if heavy:
        assert 'cifar_tfrecord' in packages[:heavy[0]], imported
