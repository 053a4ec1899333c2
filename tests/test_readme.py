"""Every command the README and docs/*.md give works as written: its script
exists, and its flags parse and make a valid configuration of that script.

The commands' effects are other tests' business (they run each script on
generated data); this catches a document that names a flag, a value or a
script the code no longer has. It also checks the README says how to enter
the environment before its first command, as a fresh shell needs, stays
short enough to read in five minutes, and links only to files that exist.
"""

import glob
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

README_MAX_LINES = 250


def _read(document: str) -> str:
    with open(os.path.join(REPOSITORY, document), encoding='utf-8') as file:
        return file.read()


def _readme() -> str:
    return _read('README.md')


def _documents() -> list[str]:
    """README.md and every docs/*.md, as paths relative to the repository."""
    docs = sorted(os.path.relpath(path, REPOSITORY)
                  for path in glob.glob(os.path.join(REPOSITORY, 'docs', '*.md')))
    return ['README.md', *docs]


def _script_commands() -> list[tuple[str, str, list[str]]]:
    """(document, script, arguments) of every `scripts/<script>.py ...` command
    of the bash blocks of README.md and docs/*.md: the arguments are the words
    after the script that start with '-'."""
    found = []
    for document in _documents():
        for block in re.findall(r'```bash\n(.*?)```', _read(document), re.DOTALL):
            words = shlex.split(block, comments=True)
            for start, word in enumerate(words):
                if re.fullmatch(r'scripts/\w+\.py', word):
                    arguments = []
                    for argument in words[start + 1:]:
                        if not argument.startswith('-'):
                            break
                        arguments.append(argument)
                    found.append((document, word[len('scripts/'):-len('.py')], arguments))
    return found


def _slug(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    text = heading.strip().lower().replace('`', '')
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def _relative_links(document: str) -> list[str]:
    """The targets of a document's markdown links and images that are neither
    URLs nor anchors of the document itself; code is left out."""
    text = re.sub(r'```.*?```', '', _read(document), flags=re.DOTALL)
    text = re.sub(r'`[^`\n]*`', '', text)
    targets = re.findall(r'!?\[[^\]]*\]\(([^)\s]+)\)', text)
    return [target for target in targets
            if not re.match(r'[a-z][a-z0-9+.-]*:', target) and not target.startswith('#')]


def test_the_readme_says_how_to_enter_the_environment_before_its_commands():
    text = _readme()
    first_command = text.index('python scripts/')
    assert 0 <= text.index('source .venv/bin/activate') < first_command


def test_the_readme_is_short():
    lines = _readme().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f'README.md has {len(lines)} lines; move details into docs/*.md')


def test_the_readme_links_to_the_docs():
    linked = {os.path.normpath(target.split('#')[0]) for target in _relative_links('README.md')}
    assert set(_documents()[1:]) <= linked


@pytest.mark.parametrize('document', _documents())
def test_every_relative_link_points_to_an_existing_file(document):
    folder = os.path.dirname(os.path.join(REPOSITORY, document))
    for target in _relative_links(document):
        path, _, anchor = target.partition('#')
        full = os.path.normpath(os.path.join(folder, path))
        assert os.path.exists(full), f'{document} links to {target}, which does not exist'
        if anchor and full.endswith('.md'):
            with open(full, encoding='utf-8') as file:
                headings = re.findall(r'^#+ (.*)$', file.read(), re.MULTILINE)
            assert anchor in {_slug(heading) for heading in headings}, (
                f'{document} links to {target}: no such heading')


def test_the_documents_give_commands_of_every_kind():
    scripts = {script for _, script, _ in _script_commands()}
    assert scripts >= {'train', 'convert', 'evaluate', 'predict', 'plot', 'benchmark',
                       'launch_local', 'data_service'}


@pytest.mark.parametrize('document, script, arguments', _script_commands(),
                         ids=lambda value: value if isinstance(value, str) else None)
def test_each_command_parses_into_a_valid_configuration(document, script, arguments):
    assert os.path.exists(os.path.join(SCRIPTS, f'{script}.py')), f'{document}: no {script}.py'
    if script == 'launch_local' and '--' in arguments:
        split = arguments.index('--')
        _check(script, arguments[:split])
        _check('train', arguments[split + 1:])
    else:
        _check(script, arguments)


def _check(script: str, arguments: list[str]) -> None:
    load_script(script)
    flags.FLAGS.unparse_flags()
    # Flag files the documents name are the repository's own.
    arguments = [argument.replace('--flagfile=', f'--flagfile={REPOSITORY}/', 1)
                 for argument in arguments]
    remaining = flags.FLAGS([f'{script}.py', *arguments])
    assert remaining == [f'{script}.py'], f'stray arguments: {remaining[1:]}'
    cli.config_from_flags(CONFIGS[script]).validate()
