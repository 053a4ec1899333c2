"""ResNet50 with ImageNet weights, a small head, and in-model preprocessing.

The model takes a tensor of images and knows nothing of files or of the input
pipeline. Every layer is a real Keras layer (no Lambda), so saved models load
with `safe_mode=True`.

    uint8 32x32 images -> Preprocessing (caffe normalization, upsampling)
    -> ResNet50 backbone (pretrained, its BatchNorm layers stay frozen, so
       in inference mode, in both phases; from scratch they train as usual)
    -> global average pooling -> Dense -> BatchNorm -> ReLU -> Dropout
    -> Dense softmax, in float32 even under mixed precision
"""

import os

import keras

from cifar_tfrecord.errors import UserInputError

NUM_CLASSES = 10
INPUT_SIZE = 32
BACKBONE_NAME = 'resnet50'


@keras.saving.register_keras_serializable(package='cifar_tfrecord')
class Preprocessing(keras.layers.Layer):
    """uint8 images to the backbone's input: normalized, then upsampled.

    Running here puts the work on the accelerator, and lets the exported
    model take raw images. Computed in float32: the ImageNet mean subtraction
    loses too much in bfloat16.
    """

    def __init__(self, normalization: str = 'caffe', image_size: int = 224,
                 upsample_method: str = 'bilinear', **kwargs):
        kwargs['dtype'] = 'float32'
        super().__init__(**kwargs)
        self.normalization = normalization
        self.image_size = image_size
        self.upsample_method = upsample_method

    def call(self, images):
        images = keras.ops.cast(images, 'float32')
        if self.normalization == 'caffe':
            images = keras.applications.resnet50.preprocess_input(images)
        else:
            images = images / 255.0
        if self.image_size == images.shape[1]:
            return images
        if self.upsample_method == 'repeat':
            factor = self.image_size // images.shape[1]
            images = keras.ops.repeat(images, factor, axis=1)
            return keras.ops.repeat(images, factor, axis=2)
        return keras.ops.image.resize(
            images, (self.image_size, self.image_size), interpolation='bilinear')

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), 'normalization': self.normalization,
                'image_size': self.image_size, 'upsample_method': self.upsample_method}


def build_model(weights: str, image_size: int, preprocess: bool, normalization: str = 'caffe',
                upsample_method: str = 'bilinear', head_units: int = 256,
                dropout: float = 0.3, batch_norm_momentum: float = 0.9) -> keras.Model:
    """The classifier.

    Args:
        weights: 'imagenet' (Keras' own), 'none' (random), or a weights file.
        image_size: side of the backbone's input.
        preprocess: the model takes uint8 32x32 images and normalizes and
            upsamples them itself; otherwise it takes images the host already
            prepared at `image_size`.
        normalization, upsample_method: as in the input configuration.
        head_units, dropout: the head's width and dropout rate.
        batch_norm_momentum: of every BatchNormalization layer; the frozen
            ones of a pretrained backbone never update, so never use it.
    """
    if preprocess:
        inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype='uint8', name='images')
        features = Preprocessing(normalization, image_size, upsample_method,
                                 name='preprocessing')(inputs)
    else:
        inputs = keras.Input((image_size, image_size, 3), dtype='float32', name='images')
        features = inputs
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
    outputs = keras.layers.Dense(NUM_CLASSES, activation='softmax', dtype='float32',
                                 name='probabilities')(features)
    return keras.Model(inputs, outputs, name='cifar10_resnet50')


def check_weights(weights: str) -> None:
    """Refuses a weights file that does not exist, before anything starts."""
    if weights not in ('imagenet', 'none') and not os.path.exists(weights):
        raise UserInputError(f'--weights={weights}: no such file')


def build_backbone(weights: str, image_size: int) -> keras.Model:
    """ResNet50 without its top, from the requested weights."""
    check_weights(weights)
    try:
        return keras.applications.ResNet50(
            include_top=False, weights=None if weights == 'none' else weights,
            input_shape=(image_size, image_size, 3))
    except Exception as error:  # Download and file errors come in many kinds.
        if weights == 'imagenet':
            raise UserInputError(
                f'could not fetch the ImageNet weights of ResNet50 ({type(error).__name__}: '
                f'{str(error).splitlines()[0] if str(error) else ""}); check the network, '
                'or use --weights=none, or --weights=PATH to a local '
                'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5') from error
        raise UserInputError(f'--weights={weights}: cannot load ({error})') from error


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def set_backbone_trainable(model: keras.Model, trainable: bool, pretrained: bool) -> None:
    """Freezes or unfreezes the backbone; pretrained BatchNorm stays frozen.

    A BatchNormalization layer that is not trainable runs in inference mode,
    so pretrained statistics survive fine-tuning on small batches. From
    scratch there is nothing to preserve and BatchNorm trains as usual.
    Recompile after calling this.
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
    outputs = model(Preprocessing(normalization, image_size, upsample_method)(inputs))
    return keras.Model(inputs, outputs, name=f'{model.name}_serving')
