"""ResNet50 with ImageNet weights, a small head, and in-model preprocessing.

The one file it reads is a backbone weights file, checked here first so that
a wrong one is refused in one line saying what is wrong. Every layer is one
of Keras' own (no Lambda, no class of this package), so a saved model loads
with `safe_mode=True` in any Python that has Keras.

    uint8 32x32 images -> preprocessing (caffe normalization, upsampling)
    -> ResNet50 backbone (pretrained, its BatchNorm layers stay frozen, so
       in inference mode, in both phases; from scratch they train as usual)
    -> global average pooling -> Dense -> BatchNorm -> ReLU -> Dropout
    -> Dense softmax, in float32 even under mixed precision
"""

import dataclasses
import os

import h5py
import keras
import numpy as np

from cifar_tfrecord import interpolation
from cifar_tfrecord import records
from cifar_tfrecord.errors import UserInputError, describe, first_line

INPUT_SIZE = 32
BACKBONE_NAME = 'resnet50'
# What Keras downloads for ResNet50 without its top: the file --weights=PATH stands in for.
NOTOP_WEIGHTS_FILE = 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'
# ImageNet's mean colour, which `keras.applications.resnet50.preprocess_input`
# subtracts from BGR images in caffe mode, in the same BGR order.
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


def build_preprocessing(normalization: str = 'caffe', image_size: int = 224,
                        upsample_method: str = 'bilinear') -> keras.Sequential:
    """uint8 32x32 images to the backbone's input, as `pipeline.normalize` then
    `pipeline.upsample`. Float32 even under mixed precision (the ImageNet
    mean subtraction loses too much in bfloat16); nothing here trains."""
    layers = [keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype='uint8'),
              *_normalization_layers(normalization)]
    if image_size != INPUT_SIZE:
        layers += _upsampling_layers(image_size, upsample_method)
    return keras.Sequential(layers, name='preprocessing')


def _normalization_layers(normalization: str) -> list[keras.layers.Layer]:
    if normalization == 'unit':
        # x / sqrt(variance) divides by 255 exactly, as the host does;
        # Rescaling(1 / 255) would multiply, one ulp off for half the values.
        return [keras.layers.Normalization(axis=None, mean=0.0, variance=255.0**2,
                                           dtype='float32', name='unit_normalization')]
    # RGB to BGR minus ImageNet's mean, as a 1x1 convolution: it swaps the
    # integer pixel values, exact even where a GPU multiplies in
    # TensorFloat-32, then adds the mean in float32, as Keras' function does.
    caffe = keras.layers.Conv2D(3, 1, trainable=False, dtype='float32',
                                name='caffe_normalization')
    caffe.build((None, INPUT_SIZE, INPUT_SIZE, 3))
    # kernel[0, 0, input channel, output channel]: output c is input 2 - c.
    swap = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
    caffe.set_weights([swap, -np.array(IMAGENET_MEAN_BGR, dtype=np.float32)])
    # Rescaling by 1 only casts uint8 to float32, which a convolution needs.
    return [keras.layers.Rescaling(1.0, dtype='float32', name='to_float32'), caffe]


def _upsampling_layers(image_size: int, upsample_method: str) -> list[keras.layers.Layer]:
    if upsample_method == 'repeat':
        # Nearest-neighbour by a whole factor repeats each pixel, as the host's tf.repeat.
        return [keras.layers.UpSampling2D(image_size // INPUT_SIZE, interpolation='nearest',
                                          dtype='float32', name='repeat')]
    # Not Resizing: XLA computes TensorFlow's bilinear resize wrongly (see
    # `interpolation`), and computes these products exactly.
    matrix = interpolation.bilinear_matrix(INPUT_SIZE, image_size)
    taller = (image_size, INPUT_SIZE, 3)
    return [_fixed_product(interpolation.ALONG_HEIGHT, (INPUT_SIZE, INPUT_SIZE, 3), taller,
                           matrix, 'bilinear_height'),
            _fixed_product(interpolation.ALONG_WIDTH, taller, (image_size, image_size, 3),
                           matrix, 'bilinear_width')]


def _fixed_product(equation: str, input_shape: tuple, output_shape: tuple,
                   matrix: np.ndarray, name: str) -> keras.layers.EinsumDense:
    """An einsum of the images with a fixed, non-trainable float32 matrix."""
    layer = keras.layers.EinsumDense(equation, output_shape, trainable=False, dtype='float32',
                                     name=name)
    layer.build((None, *input_shape))
    layer.set_weights([matrix])
    return layer


def build_model(weights: str, image_size: int, preprocess: bool, normalization: str = 'caffe',
                upsample_method: str = 'bilinear', head_units: int = 256,
                dropout: float = 0.3, batch_norm_momentum: float = 0.9) -> keras.Model:
    """The classifier, from `weights` ('imagenet', 'none' or a weights file).

    With `preprocess` it takes uint8 32x32 images and normalizes and upsamples
    them itself; otherwise images the host prepared at `image_size`.
    """
    if preprocess:
        inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype='uint8', name='images')
        features = build_preprocessing(normalization, image_size, upsample_method)(inputs)
    else:
        inputs = features = keras.Input((image_size, image_size, 3), dtype='float32',
                                        name='images')
    backbone = build_backbone(weights, image_size)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = batch_norm_momentum
    # Not `backbone(features, training=False)`: Keras 3 replaces that flag by
    # the outer call's `training` when the model runs. BatchNorm's mode is
    # set through its `trainable` flag instead (see set_backbone_trainable).
    features = backbone(features)
    features = keras.layers.GlobalAveragePooling2D(name='pool')(features)
    features = keras.layers.Dense(head_units, use_bias=False, name='head_dense')(features)
    features = keras.layers.BatchNormalization(momentum=batch_norm_momentum,
                                               name='head_norm')(features)
    features = keras.layers.Activation('relu', name='head_relu')(features)
    features = keras.layers.Dropout(dropout, name='head_dropout')(features)
    outputs = keras.layers.Dense(records.NUM_CLASSES, activation='softmax', dtype='float32',
                                 name='probabilities')(features)
    return keras.Model(inputs, outputs, name='cifar10_resnet50')


def check_weights(weights: str) -> None:
    """Refuses a weights file no ResNet50 can load, with h5py alone: a trainer
    calls it before its distribution strategy exists (multi-worker collectives
    must be set up before TensorFlow starts). `build_backbone` matches layers."""
    if weights not in ('imagenet', 'none'):
        _read_weights_file(weights)


def build_backbone(weights: str, image_size: int) -> keras.Model:
    """ResNet50 without its top, from the requested weights."""
    if weights == 'imagenet':
        try:
            return keras.applications.ResNet50(include_top=False, weights='imagenet',
                                               input_shape=(image_size, image_size, 3))
        except Exception as error:  # Download and file errors come in many kinds.
            raise UserInputError(
                f'could not fetch the ImageNet weights of ResNet50 ({describe(error)}); check '
                f'the network, or use --weights=none, or --weights=PATH to a local '
                f'{NOTOP_WEIGHTS_FILE}') from error
    contents = None if weights == 'none' else _read_weights_file(weights)
    backbone = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(image_size, image_size, 3))
    if contents is not None:
        _check_layers_match(weights, contents, backbone)
        try:
            backbone.load_weights(weights)
        except Exception as error:  # Keras' own checks, should ours have missed one.
            raise UserInputError(
                f'--weights={weights}: cannot load ({first_line(str(error))})') from error
    return backbone


# Weights files. Keras picks its loader by the file's name: `.weights.h5`
# is Keras 3's own layout (a dataset per variable at layers/<layer>/vars/<i>),
# any other `.h5` Keras 2's, which the downloadable ImageNet files use (the
# layer names, in order, as the root's `layer_names` attribute; a group per
# layer naming its weights in `weight_names`, trainable ones first, each a
# dataset such as `conv1_conv/kernel:0`). Keras 2 files load by position:
# the n-th layer with weights in the file goes into the model's n-th.

_EXPECTED = f'expected the weights of ResNet50 without its top, like {NOTOP_WEIGHTS_FILE}'


@dataclasses.dataclass(frozen=True)
class _WeightsFile:
    """A weights file's layers with weights, and their weights' shapes: in the
    order Keras loads them (Keras 2), or in the file's (Keras 3)."""
    legacy: bool
    layers: list[tuple[str, list[tuple[int, ...]]]]


def _read_weights_file(path: str) -> _WeightsFile:
    """The file's contents; refuses one Keras cannot read as weights, or with the top."""
    if not os.path.exists(path):
        raise UserInputError(f'--weights={path}: no such file')
    if os.path.isdir(path):
        raise UserInputError(f'--weights={path}: is a folder; {_EXPECTED}')
    if os.path.getsize(path) == 0:
        raise UserInputError(f'--weights={path}: the file is empty; {_EXPECTED}')
    if not h5py.is_hdf5(path):
        with open(path, 'rb') as file:  # Enough to tell a web page, a Git LFS pointer.
            start = file.read(16)
        raise UserInputError(f'--weights={path}: not an HDF5 file (it starts with '
                             f'{start!r}); {_EXPECTED}')
    try:
        with h5py.File(path, 'r') as file:
            contents = _read_contents(path, file)
    except (OSError, KeyError, ValueError) as error:  # A damaged or incomplete file.
        raise UserInputError(
            f'--weights={path}: unreadable HDF5 ({first_line(str(error))})') from error
    _check_name(path, contents.legacy)
    for name, shapes in contents.layers:
        # Weights of two dimensions are a Dense layer's: the backbone has none.
        if any(len(shape) == 2 for shape in shapes):
            raise UserInputError(
                f"--weights={path}: includes the classification top (layer '{name}', weights "
                f'{_shapes_text(shapes)}); use the weights without it, {NOTOP_WEIGHTS_FILE}')
    return contents


def _read_contents(path: str, file: h5py.File) -> _WeightsFile:
    if 'layer_names' not in file.attrs and 'model_weights' in file:
        file = file['model_weights']  # A whole Keras 2 model, as Keras reads it.
    if names := _strings(file, 'layer_names'):
        layers = [(name, [file[name][weight].shape
                          for weight in _strings(file[name], 'weight_names')]) for name in names]
        # Keras skips layers without weights, in the file and in the model.
        return _WeightsFile(legacy=True, layers=[layer for layer in layers if layer[1]])
    if 'layers' in file:
        shapes = {}

        def add(name, item):
            if isinstance(item, h5py.Dataset):
                shapes.setdefault(name.rpartition('/vars/')[0], []).append(item.shape)

        file['layers'].visititems(add)
        return _WeightsFile(legacy=False, layers=list(shapes.items()))
    raise UserInputError(f"--weights={path}: an HDF5 file without Keras weights (no "
                         f"'layer_names' attribute, no 'layers' group); {_EXPECTED}")


def _strings(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute, empty when absent. (Keras 2 splits one over
    64 KB into name0, name1...; ResNet50's layer names take 4 KB.)"""
    return [value.decode('utf8') if isinstance(value, bytes) else str(value)
            for value in group.attrs.get(name, [])]


def _check_name(path: str, legacy: bool) -> None:
    """Keras would read a misnamed file with the other format's loader, and fail."""
    keras_name = path.endswith('.weights.h5')
    if legacy and (keras_name or not path.endswith(('.h5', '.hdf5'))):
        raise UserInputError(
            f"--weights={path}: holds Keras 2's layout (as downloaded), which Keras reads only "
            f'from a name ending in .h5 but not .weights.h5; rename it, to '
            f'{NOTOP_WEIGHTS_FILE} for example')
    if not legacy and not keras_name:
        raise UserInputError(f"--weights={path}: holds Keras 3's layout, which Keras reads "
                             'only from a name ending in .weights.h5; rename it')


def _check_layers_match(path: str, contents: _WeightsFile, backbone: keras.Model) -> None:
    """What Keras checks when loading, said in one line that names the layer."""
    expected = [(layer.name, [tuple(weight.shape) for weight in
                              layer.trainable_weights + layer.non_trainable_weights])
                for layer in backbone.layers if layer.weights]
    if contents.legacy:
        count, wanted, what = len(contents.layers), len(expected), 'layers with weights'
    else:
        count = sum(len(shapes) for _, shapes in contents.layers)
        wanted, what = len(backbone.weights), 'weights'
    if count != wanted:
        raise UserInputError(
            f'--weights={path}: holds {count} {what}, a ResNet50 without its top has {wanted}')
    if not contents.legacy:
        return
    for number, ((name, shapes), (expected_name, expected_shapes)) in enumerate(
            zip(contents.layers, expected), start=1):
        if [tuple(shape) for shape in shapes] != expected_shapes:
            raise UserInputError(
                f"--weights={path}: layer '{name}' (number {number} of {len(expected)} with "
                f"weights) holds {_shapes_text(shapes)}, where ResNet50's '{expected_name}' "
                f'has {_shapes_text(expected_shapes)}')


def _shapes_text(shapes) -> str:
    """Weight shapes as 7x7x3x64, 64."""
    return ', '.join('x'.join(map(str, shape)) or 'scalar' for shape in shapes)


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def set_backbone_trainable(model: keras.Model, trainable: bool, pretrained: bool) -> None:
    """Freezes or unfreezes the backbone; pretrained BatchNorm stays frozen.

    A BatchNormalization layer that is not trainable runs in inference mode,
    so pretrained statistics survive fine-tuning on small batches; from
    scratch there are none to keep. Recompile after calling this.
    """
    backbone = backbone_of(model)
    backbone.trainable = trainable
    if trainable and pretrained:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def with_preprocessing(model: keras.Model, normalization: str, upsample_method: str) -> keras.Model:
    """A model that takes uint8 32x32 images, whatever `model` takes."""
    if model.inputs[0].dtype == 'uint8':
        return model
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype='uint8', name='images')
    image_size = model.inputs[0].shape[1]
    outputs = model(build_preprocessing(normalization, image_size, upsample_method)(inputs))
    return keras.Model(inputs, outputs, name=f'{model.name}_serving')
