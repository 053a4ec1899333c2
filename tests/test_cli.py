"""Flags from the config dataclasses, recipes as flag files, the recorded recipe;
each script's --help, and bad flags in one line."""

import dataclasses
import os
import re

import pytest
from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord import run_folder
from cifar_tfrecord.config import (BenchmarkConfig, ConvertConfig, DataServiceConfig,
                                   EvaluateConfig, InputConfig, LaunchConfig, PlotConfig,
                                   PredictConfig, TrainConfig)
from conftest import SCRIPTS, load_script, run_script

RECIPES = os.path.join(SCRIPTS, 'recipes')


def _train_config(*arguments: str) -> TrainConfig:
    """The TrainConfig scripts/train.py builds from a command line."""
    load_script('train')
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['train.py', *arguments])
    return cli.config_from_flags(TrainConfig)


@pytest.mark.parametrize('name', sorted(os.listdir(RECIPES)))
def test_every_recipe_is_a_valid_configuration(name):
    config = _train_config(f'--flagfile={os.path.join(RECIPES, name)}')
    assert config.input.records_dir == InputConfig().records_dir  # Paths stay on the command line.


def test_the_gpu_recipe_is_the_defaults_written_out():
    config = _train_config(f'--flagfile={os.path.join(RECIPES, "gpu_transfer.flags")}')
    assert config == TrainConfig()
    with open(os.path.join(RECIPES, 'gpu_transfer.flags')) as file:
        written = {line.strip().split('=')[0].lstrip('-') for line in file if line.startswith('--')}
    # Every choice of the recipe is in the file, paths and run controls aside.
    chosen = {field.name for config_class in (TrainConfig, InputConfig)
              for field in dataclasses.fields(config_class)} - {
        'input', 'records_dir', 'model_dir', 'cache', 'verify_checksums', 'data_service',
        'export_saved_model', 'evaluation_split', 'steps_per_epoch', 'deterministic',
        'overwrite', 'seed', 'shuffle_buffer_size',
        'jit_compile'}  # Left unset, which is auto; the file says so.
    assert chosen <= written, sorted(chosen - written)


def test_later_flags_override_the_recipe():
    quickstart = f'--flagfile={os.path.join(RECIPES, "quickstart.flags")}'
    assert _train_config(quickstart).fine_tune_epochs == 4
    assert _train_config(quickstart, '--fine_tune_epochs=2').fine_tune_epochs == 2


def test_the_recipe_of_a_command_line_is_recorded(tmp_path):
    recipe = tmp_path / 'mine.flags'
    recipe.write_text('# a comment\n--image_size=32\n')
    recorded = run_folder.Recipe.of(['train.py', '--model_dir=runs/x', f'--flagfile={recipe}',
                                     '--batch_size=8', '--flagfile', str(recipe)])
    assert recorded == run_folder.Recipe({str(recipe): '# a comment\n--image_size=32\n'},
                                         ('--model_dir=runs/x', '--batch_size=8'))


def test_a_bare_boolean_flag_leaves_the_next_flag_alone():
    config = _train_config('--jit_compile', '--batch_size=8')
    assert config.jit_compile is True
    assert config.input.batch_size == 8
    assert _train_config('--nojit_compile').jit_compile is False
    assert _train_config('--jit_compile=true').jit_compile is True
    assert _train_config().jit_compile is None  # Auto: on with GPUs.


# ----------------------------------------------------------------------------
# --help: each script's own flags, with their defaults, grouped as its config.

SCRIPT_CONFIGS = {'train': TrainConfig, 'convert': ConvertConfig, 'launch_local': LaunchConfig,
                  'evaluate': EvaluateConfig, 'plot': PlotConfig, 'benchmark': BenchmarkConfig,
                  'data_service': DataServiceConfig, 'predict': PredictConfig}
SCRIPTS_WITH_FLAGS = sorted(name[:-3] for name in os.listdir(SCRIPTS) if name.endswith('.py'))


def _help(capsys, script: str, flag: str = '--help') -> dict[str, dict[str, str]]:
    """{heading: {flag name: default shown}} of a script's help, which exits 0."""
    assert run_script(script, flag) == 0
    groups = {}
    for block in capsys.readouterr().out.split('\n\n'):
        heading, *lines = block.splitlines()
        if lines and lines[0].startswith('  --'):
            entries = re.split(r'^  (?=--)', '\n'.join(lines), flags=re.MULTILINE)[1:]
            groups[heading] = {
                re.match(r'--(?:\[no\])?(\w+):', entry)[1]:
                    re.search(r'^    \(default: (.*)\)$', entry, re.MULTILINE)[1]
                for entry in entries}
    return groups


def _shown(value) -> str:
    """A default as --help shows it (absl's serialization, quoted)."""
    if value is None:
        return 'not set'
    if isinstance(value, bool):
        return f"'{str(value).lower()}'"
    if isinstance(value, tuple):
        return f"'{','.join(value)}'"
    return f"'{value}'"


def _defaults(config_class) -> dict[str, str]:
    shown = {}
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.type):
            shown.update(_defaults(field.type))
        else:
            shown[field.name] = _shown(field.default)
    return shown


@pytest.mark.parametrize('script', sorted(SCRIPT_CONFIGS))
def test_help_lists_every_flag_of_the_script_with_its_config_default(capsys, script):
    listed = {}
    for group in _help(capsys, script).values():
        assert not listed.keys() & group.keys()  # Each flag once.
        listed.update(group)
    assert listed == _defaults(SCRIPT_CONFIGS[script])


def test_train_help_groups_flags_as_the_config(capsys):
    groups = _help(capsys, 'train')
    assert [heading.split(':')[0] for heading in groups] == [
        'input flags', 'model flags', 'training flags', 'devices flags', 'run flags']
    by_group = {heading.split(' ')[0]: list(group) for heading, group in groups.items()}
    assert by_group['input'] == [field.name for field in dataclasses.fields(InputConfig)]
    for field in dataclasses.fields(TrainConfig):
        if field.name != 'input':
            assert field.name in by_group[field.metadata['group']], field.name
    assert groups['devices flags: ' + 'Precision, XLA and how the work spreads over devices '
                  'and hosts.']['jit_compile'] == 'not set'


@pytest.mark.parametrize('script', SCRIPTS_WITH_FLAGS)
def test_absl_and_tensorflow_flags_are_under_helpfull_only(capsys, script):
    listed = {name for group in _help(capsys, script).values() for name in group}
    assert not listed & {'verbosity', 'logtostderr', 'helpfull', 'flagfile', 'only_check_args'}
    assert run_script(script, '--helpfull') == 0
    text = capsys.readouterr().out
    assert '--verbosity: ' in text and 'absl.logging:' in text
    assert all(f'--{name}: ' in text or f'--[no]{name}: ' in text for name in listed)


# ----------------------------------------------------------------------------
# Bad flags: one line naming the flag, exit status 1, no traceback.

@pytest.mark.parametrize('script, flag, message', [
    ('evaluate', '--batch_size=-1', 'must be at least 1'),
    ('predict', '--batch_size=0', 'must be at least 1'),
    ('benchmark', '--repeats=0', 'must be at least 1'),
    ('benchmark', '--steps=0', 'must be at least 1'),
    ('benchmark', '--image_size=16', 'must be at least 32'),
    ('benchmark', '--suite=disk', 'use one of convert, input, train, data_service'),
    ('data_service', '--port=-1', 'must be between 1 and 65535'),
    ('data_service', '--num_workers=0', 'must be at least 1'),
    ('data_service', '--role=chief', 'use one of all, dispatcher, worker'),
    ('convert', '--num_shards=0', 'must be at least 1'),
])
def test_a_bad_value_is_one_line_naming_the_flag(capsys, script, flag, message):
    assert run_script(script, flag) == 1
    assert capsys.readouterr().err.splitlines() == [f'error: {flag}: {message}']


def test_a_worker_of_no_dispatcher_is_refused(capsys):
    assert run_script('data_service', '--role=worker') == 1
    assert capsys.readouterr().err.splitlines() == [
        'error: --role=worker needs --dispatcher=host:port']


@pytest.mark.parametrize('arguments, message', [
    (['--batch_size=many'], "flag --batch_size=many: invalid literal for int() with base 10: "
                            "'many'"),
    (['--batchsize=8'], "Unknown command line flag 'batchsize'. Did you mean: batch_size ?"),
    (['--batch_size', '8', 'runs/x'], 'unexpected arguments: runs/x (flags are written '
                                      '--name=value)'),
])
def test_what_absl_cannot_parse_is_one_line_too(capsys, arguments, message):
    assert run_script('evaluate', *arguments) == 1
    assert capsys.readouterr().err.splitlines() == [f'error: {message}']
