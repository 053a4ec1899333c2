"""--weights=PATH: transfer learning from a local file in the layout Keras downloads.

The fixture writes resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 in
Keras 2's legacy HDF5 layout, the layout of the file Keras downloads, from a
ResNet50 without its top whose every weight is seeded noise, BatchNorm
statistics included (none is its initial 0 or 1): a load that did nothing,
or a statistic that moved, shows. These tests cover model.py's loading and
checks and the trainer's flag; they have a file of their own so that their
one training run goes to a test process of its own (pytest-xdist runs whole
files). tests/test_model.py covers Keras 3's .weights.h5 files.
"""

import json
import os
import re

import h5py
import keras
import numpy as np
import pytest

from cifar_tfrecord import model as model_lib
from cifar_tfrecord import run_folder
from cifar_tfrecord.errors import UserInputError
from conftest import SMALL_TRAINING, read_history, run_script

IMAGES = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
TARGETS = np.eye(10, dtype=np.float32)[[5, 6, 7, 8]]
EXPECTED = ('expected the weights of ResNet50 without its top, like '
            'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')

# Each layer's name and weights, as Keras 2 saved them: every layer, weights
# or not, each with its trainable weights first.
Layers = list[tuple[str, list[tuple[str, np.ndarray]]]]


def write_keras2_weights(path: str, layers: Layers) -> None:
    """What Keras 2's `save_weights` wrote to a .h5 file, as in the download."""
    with h5py.File(path, 'w') as file:
        _write_keras2_layers(file, layers)


def _write_keras2_layers(root: h5py.Group, layers: Layers) -> None:
    """The root's attributes: `layer_names` (every layer, in the model's order),
    `backend`, `keras_version`. A group per layer, its attribute
    `weight_names` listing datasets such as `conv1_conv/kernel:0` within it.
    """
    root.attrs['layer_names'] = [name.encode('utf8') for name, _ in layers]
    root.attrs['backend'] = b'tensorflow'
    root.attrs['keras_version'] = b'2.2.4'
    for layer_name, weights in layers:
        group = root.create_group(layer_name)
        names = [f'{layer_name}/{weight_name}:0' for weight_name, _ in weights]
        group.attrs['weight_names'] = [name.encode('utf8') for name in names]
        for name, (_, value) in zip(names, weights):
            group.create_dataset(name, data=value)


def _noise(rng: np.random.Generator, weight) -> np.ndarray:
    shape = tuple(weight.shape)
    if weight.name == 'kernel':  # Scaled by fan-in, so 50 layers stay finite.
        return rng.normal(0, np.prod(shape[:-1]) ** -0.5, shape).astype(np.float32)
    # Variances and scales must be positive; no value is 0 or 1.
    return (0.5 + rng.random(shape)).astype(np.float32)


@pytest.fixture(scope='module')
def noisy_layers() -> Layers:
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    return [(layer.name, [(weight.name, _noise(rng, weight))
                          for weight in layer.trainable_weights + layer.non_trainable_weights])
            for layer in backbone.layers]


@pytest.fixture(scope='module')
def keras2_file(tmp_path_factory, noisy_layers) -> str:
    path = str(tmp_path_factory.mktemp('weights') / model_lib.NOTOP_WEIGHTS_FILE)
    write_keras2_weights(path, noisy_layers)
    return path


def _file_values(layers: Layers) -> dict[str, np.ndarray]:
    return {f'{layer}/{weight}': value for layer, weights in layers for weight, value in weights}


def _backbone_values(model: keras.Model) -> dict[str, np.ndarray]:
    return {weight.path: np.array(weight) for weight in model_lib.backbone_of(model).weights}


def _head_values(model: keras.Model) -> dict[str, np.ndarray]:
    head = ('head_dense', 'head_norm', 'probabilities')
    return {weight.path: np.array(weight) for name in head
            for weight in model.get_layer(name).weights}


def _train(model: keras.Model, steps: int) -> None:
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss='categorical_crossentropy')
    model.optimizer.build(model.trainable_variables)  # Else the first step is traced twice.
    for _ in range(steps):
        model.train_on_batch(IMAGES, TARGETS)


def _assert_values_equal(actual: dict, expected: dict, names) -> None:
    for name in names:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def _is_statistic(name: str) -> bool:
    return name.endswith(('/moving_mean', '/moving_variance'))


def test_file_in_the_downloaded_layout_is_loaded(keras2_file, noisy_layers):
    model = model_lib.build_model(keras2_file, 32, preprocess=True, head_units=8)
    loaded, expected = _backbone_values(model), _file_values(noisy_layers)
    assert sorted(loaded) == sorted(expected)  # 318 weights, none left out.
    _assert_values_equal(loaded, expected, expected)


def test_whole_keras2_model_file_is_loaded(noisy_layers, tmp_path):
    # Keras 2's model.save: the same layout in a group `model_weights` (the
    # model's configuration beside it is left out here).
    path = str(tmp_path / 'resnet50_notop_model.h5')
    with h5py.File(path, 'w') as file:
        _write_keras2_layers(file.create_group('model_weights'), noisy_layers)
    backbone = model_lib.build_backbone(path, 32)
    np.testing.assert_array_equal(np.array(backbone.get_layer('conv5_block3_3_bn').moving_mean),
                                  _file_values(noisy_layers)['conv5_block3_3_bn/moving_mean'])


@pytest.mark.slow
def test_frozen_then_fine_tuned_backbone_keeps_the_files_batch_norm(keras2_file, noisy_layers):
    expected = _file_values(noisy_layers)
    model = model_lib.build_model(keras2_file, 32, preprocess=True, head_units=8)
    # The freeze phase: the head learns, the backbone is the file's, exactly.
    model_lib.set_backbone_trainable(model, False, pretrained=True)
    head = _head_values(model)
    _train(model, steps=2)
    _assert_values_equal(_backbone_values(model), expected, expected)
    unchanged = [name for name, value in _head_values(model).items()
                 if np.array_equal(value, head[name])]
    assert unchanged == []
    # Fine-tuning: every convolution learns; BatchNorm keeps the file's statistics.
    model_lib.set_backbone_trainable(model, True, pretrained=True)
    _train(model, steps=1)
    tuned = _backbone_values(model)
    kernels = [name for name in expected if name.endswith('/kernel')]
    assert len(kernels) == 53
    assert [name for name in kernels if np.array_equal(tuned[name], expected[name])] == []
    _assert_values_equal(tuned, expected, [name for name in expected if _is_statistic(name)])


@pytest.mark.slow
def test_trainer_fine_tunes_from_the_file(sample_records, keras2_file, noisy_layers, tmp_path):
    model_dir = tmp_path / 'run'
    # The last --weights wins over SMALL_TRAINING's.
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                      *SMALL_TRAINING, f'--weights={keras2_file}', '--freeze_epochs=1',
                      '--fine_tune_epochs=1', '--steps_per_epoch=1',
                      '--mixed_precision=float32', '--noexport_saved_model') == 0
    final = keras.saving.load_model(str(model_dir / run_folder.FINAL_MODEL))
    tuned, expected = _backbone_values(final), _file_values(noisy_layers)
    _assert_values_equal(tuned, expected, [name for name in expected if _is_statistic(name)])
    assert not np.array_equal(tuned['conv1_conv/kernel'], expected['conv1_conv/kernel'])


@pytest.mark.slow
def test_a_diverged_fine_tuning_fails_keeping_the_frozen_epoch(sample_records, keras2_file,
                                                                 tmp_path, capsys):
    """A learning rate that sends the loss to NaN: exit 1, one line naming the
    epoch and the loss, no epoch recorded past the last good one, and a
    rerun resumes there (and diverges again, saying so)."""
    model_dir = tmp_path / 'run'
    arguments = [f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                 *SMALL_TRAINING, f'--weights={keras2_file}', '--freeze_epochs=1',
                 '--fine_tune_epochs=1', '--fine_tune_learning_rate=1e30', '--steps_per_epoch=2',
                 '--mixed_precision=float32', '--noexport_saved_model']
    for attempt in range(2):
        assert run_script('train', *arguments) == 1
        errors = [line for line in capsys.readouterr().err.splitlines()
                  if line.startswith('error:')]
        assert len(errors) == 1, errors
        for words in ('diverged', 'epoch 2', 'fine_tune', 'keeps its 1 finished epochs'):
            assert words in errors[0], errors
        assert re.search(r'loss reached (nan|inf)', errors[0]), errors
        state = json.loads((model_dir / run_folder.STATE).read_text())
        assert state['epochs_done'] == 1 and state['finished'] is False
        assert [row['epoch'] for row in read_history(model_dir)] == ['1']
        assert not (model_dir / run_folder.FINAL_MODEL).exists()
        assert not (model_dir / run_folder.METRICS).exists()


# ----------------------------------------------------------------------------
# Bad files: one line naming the file and what is wrong, before anything is
# written.


def _write_truncated(path: str, layers: Layers) -> None:
    write_keras2_weights(path, [layer for layer in layers if layer[0] != 'conv5_block3_3_bn'])


def _write_reshaped(path: str, layers: Layers) -> None:
    narrow = ('conv1_conv', [('kernel', np.zeros((7, 7, 3, 32), np.float32)),
                             ('bias', np.zeros(32, np.float32))])
    write_keras2_weights(path, [narrow if layer[0] == 'conv1_conv' else layer
                                for layer in layers])


def _write_with_top(path: str, layers: Layers) -> None:
    """The layout of resnet50_weights_tf_dim_ordering_tf_kernels.h5."""
    top = [('avg_pool', []), ('predictions', [('kernel', np.zeros((2048, 1000), np.float32)),
                                              ('bias', np.zeros(1000, np.float32))])]
    write_keras2_weights(path, layers + top)


def _write_web_page(path: str, layers: Layers) -> None:
    """What a download from a wrong address saves."""
    with open(path, 'w') as file:
        file.write('<!DOCTYPE html>\n<html><title>Error 404 (Not Found)</title></html>\n')


def _write_empty(path: str, layers: Layers) -> None:
    open(path, 'w').close()


def _write_folder(path: str, layers: Layers) -> None:
    os.mkdir(path)


def _write_keras3_as_keras2_name(path: str, layers: Layers) -> None:
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    small.save_weights(path + '.weights.h5')  # Keras 3 insists on the name.
    os.rename(path + '.weights.h5', path)


def _write_keras3_with_top(path: str, layers: Layers) -> None:
    keras.applications.ResNet50(include_top=True, weights=None,
                                input_shape=(32, 32, 3)).save_weights(path)


TOP = '; use the weights without it, resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'


@pytest.mark.parametrize('file_name, write, problem', [
    (model_lib.NOTOP_WEIGHTS_FILE, _write_truncated,
     'holds 105 layers with weights, a ResNet50 without its top has 106'),
    (model_lib.NOTOP_WEIGHTS_FILE, _write_reshaped,
     "layer 'conv1_conv' (number 1 of 106 with weights) holds 7x7x3x32, 32, where "
     "ResNet50's 'conv1_conv' has 7x7x3x64, 64"),
    ('resnet50_weights_tf_dim_ordering_tf_kernels.h5', _write_with_top,
     "includes the classification top (layer 'predictions', weights 2048x1000, 1000)" + TOP),
    (model_lib.NOTOP_WEIGHTS_FILE, _write_web_page,
     f"not an HDF5 file (it starts with b'<!DOCTYPE html>\\n'); {EXPECTED}"),
    (model_lib.NOTOP_WEIGHTS_FILE, _write_empty, f'the file is empty; {EXPECTED}'),
    ('resnet50_notop.weights.h5', write_keras2_weights,
     "holds Keras 2's layout (as downloaded), which Keras reads only from a name ending in "
     '.h5 but not .weights.h5; rename it, to '
     'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 for example'),
    (model_lib.NOTOP_WEIGHTS_FILE, _write_folder, f'is a folder; {EXPECTED}'),
    ('resnet50_notop.h5', _write_keras3_as_keras2_name,
     "holds Keras 3's layout, which Keras reads only from a name ending in .weights.h5; "
     'rename it'),
    ('resnet50.weights.h5', _write_keras3_with_top,
     "includes the classification top (layer 'dense', weights 2048x1000, 1000)" + TOP),
], ids=['truncated', 'reshaped', 'with_top', 'web_page', 'empty', 'keras2_misnamed',
        'folder', 'keras3_misnamed', 'keras3_with_top'])
def test_bad_weights_file_is_refused_in_one_line(file_name, write, problem, noisy_layers,
                                                 sample_records, tmp_path, capsys):
    path = str(tmp_path / file_name)
    write(path, noisy_layers)
    message = f'--weights={path}: {problem}'
    with pytest.raises(UserInputError) as error:
        model_lib.build_model(path, 32, preprocess=True, head_units=8)
    assert str(error.value) == message
    model_dir = tmp_path / 'run'
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                      f'--weights={path}', '--image_size=32', '--batch_size=8') == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: {message}'
    assert not model_dir.exists()


def test_file_cut_short_is_refused_in_one_line(keras2_file, tmp_path):
    # What an interrupted download leaves; h5py's words say how short it is.
    path = str(tmp_path / model_lib.NOTOP_WEIGHTS_FILE)
    with open(keras2_file, 'rb') as source, open(path, 'wb') as cut:
        cut.write(source.read(os.path.getsize(keras2_file) // 2))
    with pytest.raises(UserInputError) as error:
        model_lib.build_backbone(path, 32)
    assert str(error.value).startswith(f'--weights={path}: unreadable HDF5 (')
    assert 'truncated file' in str(error.value) and '\n' not in str(error.value)
