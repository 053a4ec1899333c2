"""The GPU recipe's paths, each run on this CPU: mixed float16 with loss
scaling, XLA, every optimizer with weight decay, two replicas at 64 px
upsampled in the model, the one-line failure of --weights=imagenet offline,
and upsampling to 224 px in the model as on the host.

At test size: ResNet50 from a weights file of random values standing in for
the ImageNet ones (so, as with --weights=imagenet, the backbone's BatchNorm
layers stay in inference mode in both phases), 32 or 64 px, batches of 8,
one step a phase, at the recipe's learning rates of batch 256.

Where two runs are compared, the reference runs eagerly, and so do the runs
of whole phases: tracing ResNet50 takes 5 to 40 s per compiled function on
this CPU, an eager step a second or two. The trainer's traced path runs in
tests/test_train_outputs.py and tests/test_train_resume.py, and here under
float16 and XLA.
"""

import os
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_tfrecord import config as config_lib
from cifar_tfrecord import distributed
from cifar_tfrecord import model as model_lib
from cifar_tfrecord import pipeline
from cifar_tfrecord import run_folder
from cifar_tfrecord import train
from cifar_tfrecord.config import InputConfig, TrainConfig
from conftest import run_script, use_new_collective_keys

# Trains the real model through each recipe choice: the full suite only.
pytestmark = pytest.mark.slow

BATCH_SIZE = 8
IMAGES = np.random.default_rng(0).integers(0, 256, (BATCH_SIZE, 32, 32, 3), dtype=np.uint8)
TARGETS = np.eye(10, dtype=np.float32)[np.arange(BATCH_SIZE) % 10]


@pytest.fixture(scope='module')
def backbone_weights(tmp_path_factory):
    """A backbone weights file of random values, standing in for ImageNet's.

    Convolution weights do not depend on the image size: one file serves
    every size.
    """
    path = str(tmp_path_factory.mktemp('weights') / 'resnet50_notop.weights.h5')
    keras.utils.set_random_seed(0)
    keras.applications.ResNet50(include_top=False, weights=None,
                                input_shape=(32, 32, 3)).save_weights(path)
    return path


@pytest.fixture
def eager_functions():
    """Keras' train, test and predict functions run eagerly, untraced."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def _config(weights: str, records_dir: str = 'records', model_dir: str = 'unused',
            image_size: int = 32, augment: bool = True, **flags) -> TrainConfig:
    """The recipe at test size.

    The learning rates are the recipe's at batch 256 (0.1, then 0.01), here
    reached at batch 8, so that one step moves the weights far above float32
    rounding; no warm-up, whose first step has a learning rate of 0.
    """
    scale = config_lib.REFERENCE_BATCH_SIZE / BATCH_SIZE
    return TrainConfig(
        input=InputConfig(records_dir=records_dir, batch_size=BATCH_SIZE,
                          image_size=image_size, augment=augment),
        model_dir=model_dir, weights=weights, head_units=16, warmup_epochs=0,
        learning_rate=0.1 * scale, fine_tune_learning_rate=0.01 * scale, **flags)


def _values(variables) -> dict[str, np.ndarray]:
    return {variable.path: np.array(variable) for variable in variables}


def _replica_values(strategy: tf.distribute.Strategy, variable: keras.Variable) -> list:
    """A scalar variable's value on each replica."""
    return [float(copy) for copy in strategy.experimental_local_results(variable.value)]


# Collective keys of this file's strategies, apart from any other strategy's.
def _mirrored_strategy() -> tf.distribute.Strategy:
    """distributed.make_strategy('mirrored'), its collective operations keyed apart
    from any strategy before it in this process (see conftest)."""
    use_new_collective_keys()
    return distributed.make_strategy('mirrored')


def _predict(model: keras.Model) -> np.ndarray:
    return model(IMAGES, training=False).numpy()


# Two computations of the same steps that add in another order (XLA's fused
# kernels; each replica's sum, then the all-reduce): float32 rounds every sum
# to 1e-7 of it, grown through 50 layers of random weights to at most 1e-5
# of a variable's largest value here. Relative to that value (or to 1).
WEIGHT_TOLERANCE = 1e-4


def _largest_difference(first: dict, second: dict) -> float:
    """Over the variables: the largest |first - second|, relative to the variable's scale."""
    return max(np.abs(first[name] - second[name]).max() / max(1.0, np.abs(second[name]).max())
               for name in second)


# ----------------------------------------------------------------------------
# Mixed float16 (CUDA GPUs): loss scaling.


def test_mixed_float16_scales_the_loss_and_skips_a_step_that_overflows(backbone_weights):
    # As train.train sets the policy, before building; on two replicas, as
    # on two GPUs, where the skip is decided across the replicas.
    keras.mixed_precision.set_global_policy(train.resolve_precision('mixed_float16'))
    strategy = _mirrored_strategy()
    config = _config(backbone_weights)
    with strategy.scope():
        model = train.build(config)
        model_lib.set_backbone_trainable(model, False, pretrained=True)
        train.compile_model(model, config, 'freeze', steps_per_epoch=1, epochs=1,
                            jit_compile=False)
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer('head_dense').compute_dtype == 'float16'
    assert model.outputs[0].dtype == 'float32'
    scale = optimizer.initial_scale

    before = _values(model.trainable_weights)
    loss = model.train_on_batch(IMAGES, TARGETS)[0]
    trained = _values(model.trainable_weights)
    assert np.isfinite(loss)
    assert all(not np.array_equal(before[name], trained[name]) for name in trained)
    assert _replica_values(strategy, optimizer.iterations) == [1, 1]
    assert _replica_values(strategy, optimizer.dynamic_scale) == [scale, scale]

    # Targets a million times too large: the loss is still finite in float32,
    # but its gradient times the loss scale overflows float16 in the head.
    loss = model.train_on_batch(IMAGES, TARGETS * 1e6)[0]
    assert np.isfinite(loss)
    for name, value in _values(model.trainable_weights).items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    assert _replica_values(strategy, optimizer.iterations) == [1, 1]  # The step was skipped,
    assert _replica_values(strategy, optimizer.dynamic_scale) == [scale / 2] * 2  # the scale halved.
    assert _predict(model).dtype == np.float32


# ----------------------------------------------------------------------------
# XLA (GPUs): compiled on this CPU, it trains as TensorFlow's own kernels do.
# At 32 px, without the in-model upsampling, which XLA gets wrong at 224 px
# (test_upsampling_to_224_in_the_model_equals_the_host_pipeline).

# Probabilities after a phase. From weights that differ by rounding, through
# logits of hundreds (the random backbone's activations reach 1e4), they
# differed by at most 4e-6 here (2e-4 on a batch of 4 other images).
XLA_TOLERANCE = 5e-4


def test_xla_trains_both_phases_as_without_it(backbone_weights):
    # Without dropout: XLA draws other random numbers than TensorFlow's
    # kernels from the same seed, so the masks would differ.
    config = _config(backbone_weights, dropout=0.0)
    keras.utils.set_random_seed(0)
    compiled, reference = train.build(config), train.build(config)
    reference.set_weights(compiled.get_weights())
    before = _values(reference.weights)
    for phase in train.PHASES:
        for model, jit_compile in ((compiled, train.resolve_jit_compile(True)),
                                   (reference, False)):
            model_lib.set_backbone_trainable(model, phase == 'fine_tune', pretrained=True)
            train.compile_model(model, config, phase, steps_per_epoch=1, epochs=1,
                                jit_compile=jit_compile)
        reference.run_eagerly = True  # Without XLA, and untraced.
        assert compiled.jit_compile, phase
        compiled_loss = compiled.train_on_batch(IMAGES, TARGETS)[0]
        reference_loss = reference.train_on_batch(IMAGES, TARGETS)[0]
        assert compiled_loss == pytest.approx(reference_loss, rel=1e-5), phase
        np.testing.assert_allclose(_predict(compiled), _predict(reference), atol=XLA_TOLERANCE,
                                   err_msg=phase)
        after = _values(reference.weights)
        difference = _largest_difference(_values(compiled.weights), after)
        assert difference <= WEIGHT_TOLERANCE, phase
        moved = _largest_difference(after, before)
        assert moved > 100 * WEIGHT_TOLERANCE, phase  # The phase trained, far more than that.
        before = after


# ----------------------------------------------------------------------------
# Optimizers and decoupled weight decay, in a phase of the trainer.


def _run_phase(model: keras.Model, config: TrainConfig, phase: str,
               strategy: tf.distribute.Strategy) -> None:
    """One phase of one step an epoch, as train.train runs it, into config.model_dir."""
    first_epoch, _ = train.phase_epochs(config, phase)
    train.run_phase(model, config, phase, strategy, first_epoch, steps_per_epoch=1,
                    output=run_folder.RunFolder(config.model_dir), restore=None,
                    service_job=None, estimate=None,
                    jit_compile=train.resolve_jit_compile(config.jit_compile))


@pytest.fixture(scope='module')
def head_phase_model(backbone_weights):
    """The trainer's model at 32 px, and its first weights; each test resets it."""
    keras.utils.set_random_seed(0)
    model = train.build(_config(backbone_weights))
    return model, model.get_weights()


@pytest.mark.parametrize('name', config_lib.OPTIMIZERS)
def test_every_optimizer_trains_a_phase_with_decoupled_weight_decay(
        name, head_phase_model, backbone_weights, sample_records, tmp_path, eager_functions):
    model, initial = head_phase_model
    decay = 0.1
    trained = {}
    for weight_decay in (0.0, decay):
        config = _config(backbone_weights, sample_records, str(tmp_path / f'decay-{weight_decay}'),
                         optimizer=name, weight_decay=weight_decay, freeze_epochs=1,
                         fine_tune_epochs=0)
        model.set_weights(initial)
        _run_phase(model, config, 'freeze', distributed.make_strategy('default'))
        trained[weight_decay] = _values(model.trainable_weights)
    model.set_weights(initial)
    start = _values(model.weights)
    shrink = config.scaled_learning_rate('freeze') * decay
    for variable, plain in trained[0.0].items():
        assert not np.array_equal(plain, start[variable]), variable  # The phase trained it.
        # The same data, so the same gradients, in both runs. Decay takes
        # learning rate x decay of each weight off before the step, whatever
        # its gradient: a weight with a zero gradient shrinks by that much,
        # and with --weight_decay=0 not at all. Rounding: 1e-7 of the values.
        scale = max(np.abs(start[variable]).max(), np.abs(plain).max())
        np.testing.assert_allclose(plain - trained[decay][variable], shrink * start[variable],
                                   rtol=1e-3, atol=1e-6 * scale, err_msg=variable)
    backbone = {variable.path for variable in model_lib.backbone_of(model).weights}
    assert not backbone & set(trained[decay])  # Frozen, so neither trained nor decayed.


# ----------------------------------------------------------------------------
# Two replicas at 64 px, upsampled in the model.

def _comparable_model(config: TrainConfig, strategy: tf.distribute.Strategy) -> keras.Model:
    """The trainer's model, its head's BatchNorm synchronized over the replicas.

    By design, not by accident, a replica computes some things from its own
    images alone, which one device computes from all of them: the batch
    statistics of BatchNorm in training mode (the head's), dropout masks
    (off through the config) and augmentation (drawn per replica's batch,
    also off). Synchronized, BatchNorm takes the global batch's statistics,
    as one device does; everything else can then be compared.
    """
    keras.utils.set_random_seed(config.input.seed)
    with strategy.scope():
        model = train.build(config)
    model.get_layer('head_norm').synchronized = True
    return model


def _train_both_phases(config: TrainConfig, strategy_name: str) -> list[dict[str, np.ndarray]]:
    """The weights before and after each phase; every replica must hold the same."""
    strategy = _mirrored_strategy() if strategy_name == 'mirrored' else distributed.make_strategy(
        strategy_name)
    model = _comparable_model(config, strategy)
    weights = [_values(model.weights)]
    for phase in train.PHASES:
        _run_phase(model, config, phase, strategy)
        weights.append(_values(model.weights))
        for variable in model.weights:
            copies = strategy.experimental_local_results(variable.value)
            for copy in copies[1:]:
                np.testing.assert_array_equal(copy, copies[0], err_msg=variable.path)
    return weights


def test_two_replicas_train_both_phases_as_one_device(backbone_weights, sample_records,
                                                      tmp_path, eager_functions):
    runs = {}
    for strategy_name in ('mirrored', 'one_device'):
        config = _config(backbone_weights, sample_records, str(tmp_path / strategy_name),
                         image_size=64, augment=False, dropout=0.0, freeze_epochs=1,
                         fine_tune_epochs=1)
        runs[strategy_name] = _train_both_phases(config, strategy_name)
    assert config.input.upsample_on == 'device'  # The 64 px images are made in the model.
    one_device = runs['one_device']
    for stage, mirrored, expected in zip(('start', *train.PHASES), runs['mirrored'], one_device):
        difference = _largest_difference(mirrored, expected)
        assert difference <= WEIGHT_TOLERANCE, stage
    for phase, before, after in zip(train.PHASES, one_device, one_device[1:]):
        moved = _largest_difference(after, before)
        assert moved > 100 * WEIGHT_TOLERANCE, phase  # Far more than that.
    kernel = 'conv1_conv/kernel'  # The backbone's: trained by the fine-tuning alone.
    assert np.array_equal(one_device[1][kernel], one_device[0][kernel])
    assert not np.array_equal(one_device[2][kernel], one_device[1][kernel])


# ----------------------------------------------------------------------------
# --weights=imagenet without a network.

_KERAS_CACHE = os.path.join(os.environ.get('KERAS_HOME', os.path.expanduser('~/.keras')),
                            'models', 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')


@pytest.mark.skipif(os.path.exists(_KERAS_CACHE),
                    reason=f'{_KERAS_CACHE} is there: Keras needs no network')
def test_imagenet_weights_without_a_network_fail_in_one_line_and_write_nothing(
        sample_records, tmp_path, capsys, monkeypatch):
    def no_name_resolution(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, 'Temporary failure in name resolution')

    # Offline for sure: a network that appeared would not start a download.
    monkeypatch.setattr(socket, 'getaddrinfo', no_name_resolution)
    model_dir = tmp_path / 'run'
    assert run_script('train', f'--records_dir={sample_records}', f'--model_dir={model_dir}',
                      '--weights=imagenet', '--image_size=32', '--batch_size=8') == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith('error: could not fetch the ImageNet weights of ResNet50 (')
    assert '--weights=none' in error and '--weights=PATH' in error
    assert not model_dir.exists()


# ----------------------------------------------------------------------------
# Upsampling to 224 px: in the model (--upsample_on=device) as on the host,
# and compiled by XLA as on GPUs. (tests/test_model.py compares the two
# without XLA at 32, 64 and 96 px.)


@pytest.fixture(scope='module')
def preprocessing_224():
    """The recipe model's preprocessing at 224 px, by upsampling method, as train.build makes it."""
    layers = {}
    for method in config_lib.UPSAMPLE_METHODS:
        config = TrainConfig(input=InputConfig(image_size=224, upsample_method=method),
                             weights='none', head_units=16)
        layers[method] = train.build(config).get_layer('preprocessing')
    return layers


# With XLA, bilinear upsampling is the case to watch: TensorFlow 2.21's XLA
# resizes 32 to 224 px from the wrong source pixel in rows and columns 3, 10,
# ..., 220 (tensorflow/tensorflow#118344), which is why the model upsamples
# by fixed matrix products instead (cifar_tfrecord/interpolation.py); the
# host, never compiled by XLA, keeps TensorFlow's resize.
@pytest.mark.parametrize('method, jit_compile', [
    ('bilinear', False), ('repeat', False), ('repeat', True), ('bilinear', True)])
def test_upsampling_to_224_in_the_model_equals_the_host_pipeline(preprocessing_224, method,
                                                                 jit_compile):
    layer = preprocessing_224[method]
    in_model = (tf.function(layer, jit_compile=True) if jit_compile else layer)(IMAGES)
    host = InputConfig(image_size=224, upsample_method=method, upsample_on='host')

    def host_pipeline(images, labels):
        return pipeline.finish(images, labels, host, training=False)

    # The host's stage functions as the pipeline runs them, inside tf.data.
    labels = tf.zeros([BATCH_SIZE], tf.int64)
    on_host, _ = next(iter(tf.data.Dataset.from_tensors((IMAGES, labels)).map(host_pipeline)))
    assert in_model.shape == on_host.shape == (BATCH_SIZE, 224, 224, 3)
    # Repetition exactly; bilinear to float32 rounding of caffe's -124 to 152
    # (the model's matrix products add in another order than the resize).
    np.testing.assert_allclose(np.array(in_model), on_host.numpy(), rtol=0,
                               atol=2e-3 if method == 'bilinear' else 0)
