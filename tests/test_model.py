"""The model: preprocessing, BatchNorm modes, weights files, and the model files
saved for inference (callbacks.save_inference_model): Keras alone loads them,
and they hold no optimizer state.
"""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from cifar_tfrecord import callbacks
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord.errors import UserInputError

IMAGES = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
TARGETS = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory):
    """A local backbone weights file, standing in for the ImageNet one."""
    path = str(tmp_path_factory.mktemp('weights') / 'resnet50_notop.weights.h5')
    keras.applications.ResNet50(include_top=False, weights=None,
                                input_shape=(32, 32, 3)).save_weights(path)
    return path


def _moving_means(model):
    backbone = model_lib.backbone_of(model)
    return [np.array(layer.moving_mean) for layer in backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


def _train_one_step(model):
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss='categorical_crossentropy')
    model.optimizer.build(model.trainable_variables)  # Else the step is traced twice.
    model.train_on_batch(IMAGES, TARGETS)


def test_pretrained_backbone_batchnorm_stays_in_inference_mode(weights_file):
    model = model_lib.build_model(weights_file, 32, preprocess=True, head_units=8)
    for trainable in (False, True):  # The frozen phase, then fine-tuning.
        model_lib.set_backbone_trainable(model, trainable, pretrained=True)
        before = _moving_means(model)
        kernel = np.array(model_lib.backbone_of(model).get_layer('conv1_conv').kernel)
        _train_one_step(model)
        for old, new in zip(before, _moving_means(model)):
            np.testing.assert_array_equal(old, new)
        changed = not np.array_equal(
            kernel, np.array(model_lib.backbone_of(model).get_layer('conv1_conv').kernel))
        assert changed == trainable


def test_backbone_from_scratch_batchnorm_learns_statistics():
    model = model_lib.build_model('none', 32, preprocess=True, head_units=8)
    model_lib.set_backbone_trainable(model, True, pretrained=False)
    before = _moving_means(model)
    _train_one_step(model)
    assert any(not np.array_equal(old, new) for old, new in zip(before, _moving_means(model)))


@pytest.mark.slow
def test_batch_norm_momentum_sets_how_fast_moving_statistics_follow():
    first_moving_means = {}
    for momentum in (0.9, 0.5):
        keras.utils.set_random_seed(0)  # The same weights, so the same batch statistics.
        model = model_lib.build_model('none', 32, preprocess=True, head_units=8,
                                      batch_norm_momentum=momentum)
        assert model.get_layer('head_norm').momentum == momentum
        _train_one_step(model)
        first_moving_means[momentum] = _moving_means(model)[0]
    # From zero, one step moves a moving mean (1 - momentum) of the way.
    np.testing.assert_allclose(first_moving_means[0.5], 5 * first_moving_means[0.9],
                               rtol=1e-4, atol=1e-6)


def test_weights_file_is_loaded(weights_file):
    model = model_lib.build_model(weights_file, 32, preprocess=True, head_units=8)
    reference = keras.applications.ResNet50(include_top=False, weights=weights_file,
                                            input_shape=(32, 32, 3))
    for loaded, expected in zip(model_lib.backbone_of(model).weights, reference.weights):
        np.testing.assert_array_equal(np.array(loaded), np.array(expected))


def test_missing_weights_file_is_refused():
    with pytest.raises(UserInputError, match='--weights=/no/such.h5: no such file'):
        model_lib.build_model('/no/such.h5', 32, preprocess=True)


# ----------------------------------------------------------------------------
# In-model preprocessing: Keras' own layers, exactly the host's computation.


@pytest.mark.parametrize('normalization', ['caffe', 'unit'])
@pytest.mark.parametrize('method', ['bilinear', 'repeat'])
@pytest.mark.parametrize('size', [32, 64, 96, 224])
def test_in_model_preprocessing_matches_the_pipeline(normalization, size, method):
    preprocessing = model_lib.build_preprocessing(normalization, size, method)
    expected = pipeline.upsample(pipeline.normalize(IMAGES, normalization), size, method)
    # Exactly but for bilinear weights: the same TensorFlow ops on the same
    # float32 values (the channel swap multiplies integers by 1 and 0, and
    # the mean is added after). The model multiplies by bilinear weights as
    # matrices, the host resizes: float32 rounding of caffe's -124..152.
    tolerance = 2e-3 if method == 'bilinear' and size != 32 else 0
    np.testing.assert_allclose(np.array(preprocessing(IMAGES)), np.array(expected), rtol=0,
                               atol=tolerance)


def test_preprocessing_runs_in_float32_under_mixed_precision_and_never_trains():
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    model = model_lib.build_model('none', 64, preprocess=True, head_units=8)
    assert model.outputs[0].dtype == 'float32'
    preprocessing = model.get_layer('preprocessing')
    assert preprocessing.output.dtype == 'float32'
    assert {layer.compute_dtype for layer in preprocessing.layers} == {'float32'}
    for trainable in (False, True):  # The frozen phase, then fine-tuning.
        model_lib.set_backbone_trainable(model, trainable, pretrained=False)
        assert not set(map(id, preprocessing.weights)) & set(map(id, model.trainable_weights))
    expected = pipeline.upsample(pipeline.normalize(IMAGES, 'caffe'), 64, 'bilinear')
    np.testing.assert_allclose(np.array(preprocessing(IMAGES)), np.array(expected), rtol=0,
                               atol=2e-3)


def test_a_model_of_host_prepared_images_gets_the_same_preprocessing():
    """What evaluate.load_serving_model gives a model trained with --upsample_on=host."""
    host_model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(),
                                   keras.layers.Dense(10)])
    serving = model_lib.with_preprocessing(host_model, 'unit', 'repeat')
    assert serving.inputs[0].dtype == 'uint8'
    prepared = pipeline.upsample(pipeline.normalize(IMAGES, 'unit'), 64, 'repeat')
    np.testing.assert_array_equal(np.array(serving(IMAGES)), np.array(host_model(prepared)))


# ----------------------------------------------------------------------------
# Model files for inference: Keras alone loads them, and they hold no optimizer.


def predict_eagerly(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """A model's predictions without tracing it, which costs seconds for ResNet50."""
    return np.asarray(model(images, training=False))


# Loads models with keras.saving.load_model in a Python that never imported
# this package, predicts, and saves the predictions: argv is the images
# (.npy), the output (.npz), then the model files. Eagerly, as `predict_eagerly`.
_KERAS_ALONE = """
import sys
import keras
import numpy as np
images = np.load(sys.argv[1])
predictions = [np.asarray(keras.saving.load_model(path, safe_mode=True)(images, training=False))
               for path in sys.argv[3:]]
assert 'cifar_tfrecord' not in sys.modules, 'the package was imported'
np.savez(sys.argv[2], *predictions)
"""


def predict_with_keras_alone(images: np.ndarray, model_paths: list[str],
                             folder) -> list[np.ndarray]:
    """Each model's predictions, computed in a fresh Python with Keras alone."""
    np.save(folder / 'images.npy', images)
    output = folder / 'keras_alone.npz'
    result = subprocess.run(
        [sys.executable, '-c', _KERAS_ALONE, str(folder / 'images.npy'), str(output),
         *model_paths], cwd=folder, capture_output=True, text=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(output) as predictions:
        return [predictions[f'arr_{index}'] for index in range(len(model_paths))]


@pytest.fixture(scope='module')
def inference_files(tmp_path_factory):
    """final.keras and best.keras as the trainer saves them, with their predictions.

    final: caffe and bilinear upsampling, compiled with an AdamW optimizer
    whose state exists, as after fine-tuning; also saved by plain
    `model.save` (optimizer included) to compare sizes. best: unit
    normalization and repeated pixels. Both at 64 px, so both upsample.
    """
    folder = tmp_path_factory.mktemp('inference_files')
    final = model_lib.build_model('none', 64, preprocess=True, head_units=8)
    final.compile(optimizer=keras.optimizers.AdamW(0.01), loss='categorical_crossentropy')
    final.optimizer.build(final.trainable_variables)
    best = model_lib.build_model('none', 64, preprocess=True, normalization='unit',
                                 upsample_method='repeat', head_units=8)
    paths = {name: str(folder / name) for name in ('final.keras', 'best.keras', 'compiled.keras')}
    callbacks.save_inference_model(final, paths['final.keras'])
    callbacks.save_inference_model(best, paths['best.keras'])
    final.save(paths['compiled.keras'])
    return types.SimpleNamespace(
        folder=folder, paths=paths, final=final,
        predictions={'final.keras': predict_eagerly(final, IMAGES),
                     'best.keras': predict_eagerly(best, IMAGES)})


def _layers_within(layer):
    return [layer, *(inner for child in getattr(layer, 'layers', [])
                     for inner in _layers_within(child))]


def test_model_is_made_of_keras_own_layers(inference_files):
    foreign = [type(layer).__qualname__ for layer in _layers_within(inference_files.final)
               if not type(layer).__module__.startswith('keras.')
               or isinstance(layer, keras.layers.Lambda)]
    assert foreign == []


@pytest.mark.slow
def test_saved_models_load_and_predict_with_keras_alone(inference_files):
    names = ['final.keras', 'best.keras']
    loaded = predict_with_keras_alone(
        IMAGES, [inference_files.paths[name] for name in names], inference_files.folder)
    for name, predictions in zip(names, loaded):
        # The same float32 computation in another process (equal here): at
        # most the order of a sum may differ.
        np.testing.assert_allclose(predictions, inference_files.predictions[name],
                                   rtol=0, atol=1e-6, err_msg=name)
    assert not np.allclose(loaded[0], loaded[1], atol=1e-3)  # Two models indeed.


def _as_json(config: dict):
    return json.loads(json.dumps(config))


def test_model_files_hold_no_optimizer_state(inference_files):
    sizes = {name: os.path.getsize(path) for name, path in inference_files.paths.items()}
    # The file is the weights, float32, and little else ...
    weight_bytes = 4 * inference_files.final.count_params()
    assert weight_bytes < sizes['final.keras'] < 1.05 * weight_bytes
    # ... where AdamW adds two moments per trainable weight, and nearly all
    # of ResNet50's weights train when fine-tuning from scratch: 3x.
    assert sizes['compiled.keras'] > 2.8 * sizes['final.keras']
    loaded = keras.saving.load_model(inference_files.paths['final.keras'], safe_mode=True)
    assert not loaded.compiled
    # The same model (compared as JSON, as saved: tuples become lists).
    assert _as_json(loaded.get_config()) == _as_json(inference_files.final.get_config())
    np.testing.assert_array_equal(predict_eagerly(loaded, IMAGES),
                                  inference_files.predictions['final.keras'])
