"""Flags from the config dataclasses, recipes as flag files, the recorded recipe."""

import dataclasses
import os

import pytest
from absl import flags

from cifar_tfrecord import cli
from cifar_tfrecord.config import InputConfig, TrainConfig
from conftest import SCRIPTS, load_script

RECIPES = os.path.join(SCRIPTS, 'recipes')


def _train_config(*arguments: str) -> TrainConfig:
    """The TrainConfig scripts/train.py builds from a command line."""
    load_script('train')
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['train.py', *arguments])
    return cli.config_from_flags(TrainConfig).validate()


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
        'overwrite', 'seed', 'shuffle_buffer_size'}
    assert chosen <= written, sorted(chosen - written)


def test_later_flags_override_the_recipe():
    quickstart = f'--flagfile={os.path.join(RECIPES, "quickstart.flags")}'
    assert _train_config(quickstart).fine_tune_epochs == 4
    assert _train_config(quickstart, '--fine_tune_epochs=2').fine_tune_epochs == 2


def test_the_recipe_of_a_command_line_is_recorded(tmp_path):
    recipe = tmp_path / 'mine.flags'
    recipe.write_text('# a comment\n--image_size=32\n')
    recorded = cli.recipe(['train.py', '--model_dir=runs/x', f'--flagfile={recipe}',
                           '--batch_size=8', '--flagfile', str(recipe)])
    assert recorded == {'flagfiles': {str(recipe): '# a comment\n--image_size=32\n'},
                        'flags': ['--model_dir=runs/x', '--batch_size=8']}
