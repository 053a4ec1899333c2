"""Every command the README gives works as written: its script exists, and its
flags parse and make a valid configuration of that script.

The commands' effects are other tests' business (they run each script on
generated data); this catches a README that names a flag, a value or a
script the code no longer has. It also checks the README says how to enter
the environment before its first command, as a fresh shell needs.
"""

import os
import re
import shlex

import pytest
from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord.config import (BenchmarkConfig, ConvertConfig, DataServiceConfig,
                                   EvaluateConfig, LaunchConfig, PlotConfig, PredictConfig,
                                   TrainConfig)
from conftest import REPOSITORY, SCRIPTS, load_script

CONFIGS = {'train': TrainConfig, 'convert': ConvertConfig, 'launch_local': LaunchConfig,
           'evaluate': EvaluateConfig, 'plot': PlotConfig, 'benchmark': BenchmarkConfig,
           'data_service': DataServiceConfig, 'predict': PredictConfig}


def _readme() -> str:
    with open(os.path.join(REPOSITORY, 'README.md')) as file:
        return file.read()


def _script_commands() -> list[tuple[str, list[str]]]:
    """(script, arguments) of every `scripts/<script>.py ...` command of the
    README's bash blocks: the words after the script that start with '-'."""
    found = []
    for block in re.findall(r'```bash\n(.*?)```', _readme(), re.DOTALL):
        words = shlex.split(block, comments=True)
        for start, word in enumerate(words):
            if re.fullmatch(r'scripts/\w+\.py', word):
                arguments = []
                for argument in words[start + 1:]:
                    if not argument.startswith('-'):
                        break
                    arguments.append(argument)
                found.append((word[len('scripts/'):-len('.py')], arguments))
    return found


def test_the_readme_says_how_to_enter_the_environment_before_its_commands():
    text = _readme()
    first_command = text.index('python scripts/')
    assert 0 <= text.index('source .venv/bin/activate') < first_command


def test_the_readme_gives_commands_of_every_kind():
    scripts = {script for script, _ in _script_commands()}
    assert scripts >= {'train', 'convert', 'evaluate', 'predict', 'plot', 'benchmark',
                       'launch_local', 'data_service'}


@pytest.mark.parametrize('script, arguments', _script_commands(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_each_readme_command_parses_into_a_valid_configuration(script, arguments):
    assert os.path.exists(os.path.join(SCRIPTS, f'{script}.py'))
    if script == 'launch_local' and '--' in arguments:
        split = arguments.index('--')
        _check(script, arguments[:split])
        _check('train', arguments[split + 1:])
    else:
        _check(script, arguments)


def _check(script: str, arguments: list[str]) -> None:
    load_script(script)
    flags.FLAGS.unparse_flags()
    # Flag files the README names are the repository's own.
    arguments = [argument.replace('--flagfile=', f'--flagfile={REPOSITORY}/', 1)
                 for argument in arguments]
    remaining = flags.FLAGS([f'{script}.py', *arguments])
    assert remaining == [f'{script}.py'], f'stray arguments: {remaining[1:]}'
    cli.config_from_flags(CONFIGS[script]).validate()
