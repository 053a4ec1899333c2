"""The model: preprocessing, BatchNorm modes, weights files, safe loading."""

import keras
import numpy as np
import pytest

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


@pytest.mark.parametrize('normalization, size, method', [
    ('caffe', 64, 'bilinear'), ('unit', 96, 'repeat'), ('caffe', 32, 'bilinear')])
def test_in_model_preprocessing_matches_the_pipeline(normalization, size, method):
    layer = model_lib.Preprocessing(normalization, size, method)
    expected = pipeline.upsample(pipeline.normalize(IMAGES, normalization), size, method)
    np.testing.assert_allclose(np.array(layer(IMAGES)), np.array(expected), atol=1e-3)


def test_model_has_no_lambda_and_round_trips_in_safe_mode(tmp_path):
    model = model_lib.build_model('none', 64, preprocess=True, head_units=8)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    path = str(tmp_path / 'model.keras')
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(IMAGES, verbose=0),
                               model.predict(IMAGES, verbose=0), atol=1e-5)


def test_output_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        model = model_lib.build_model('none', 32, preprocess=True, head_units=8)
        assert model.outputs[0].dtype == 'float32'
        assert model.get_layer('preprocessing').compute_dtype == 'float32'
    finally:
        keras.mixed_precision.set_global_policy('float32')
