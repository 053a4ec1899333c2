"""Every default of the project, in one place.

Scripts define their flags from these dataclasses and build one config from
the flags; library code takes the config and never reads flags.
"""

import dataclasses

from cifar_tfrecord.errors import UserInputError

SOURCES = ('auto', 'kaggle', 'dir', 'tfds', 'sample')


def option(default, help: str):
    """A config field with the help text its command-line flag shows."""
    return dataclasses.field(default=default, metadata={'help': help})


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """How `scripts/convert.py` turns a source into TFRecord shards."""
    source: str = option('auto', (
        'Where the images come from: kaggle, dir (--data_dir), tfds, sample (generated '
        'offline), or auto: --data_dir if given, else the Kaggle zip in --download_dir, '
        'else Kaggle when credentials exist, else the sample.'))
    data_dir: str | None = option(None, (
        'A cifar-10.zip, or a folder with cifar-10.zip, or train.7z/test.7z with '
        'trainLabels.csv, or extracted train/<id>.png with trainLabels.csv.'))
    download_dir: str = option('downloads', 'Where --source=kaggle keeps cifar-10.zip.')
    tfds_data_dir: str | None = option(None, 'data_dir of tensorflow-datasets (--source=tfds).')
    output_dir: str = option('records', 'The records folder to write (local or gs://).')
    encoding: str = option('raw', (
        'raw: uint8 pixels, nothing to decode while training; png: the original bytes, '
        'under the keys of the TF Model Garden classification decoder.'))
    validation_fraction: float = option(
        0.1, "Share of Kaggle's train set held out, per class, as the validation split.")
    seed: int = option(0, 'Seed of the split, of the shard shuffle and of the sample.')
    # 64 lets file-level sharding feed up to 64 input workers.
    num_shards: int = option(64, 'Shards per split (fewer when a split is smaller).')
    sample_images_per_class: int = option(300, 'Training images per class of --source=sample.')
    sample_test_images: int = option(500, 'Unlabelled test images of --source=sample.')
    overwrite: bool = option(False, 'Replace records made from other input or flags.')

    def validate(self) -> 'ConvertConfig':
        """Checks the values a user can get wrong; returns self."""
        if self.source not in SOURCES:
            raise UserInputError(f'--source={self.source}: use one of {", ".join(SOURCES)}')
        if self.source == 'dir' and not self.data_dir:
            raise UserInputError('--source=dir needs --data_dir')
        if self.encoding not in ('raw', 'png'):
            raise UserInputError(f'--encoding={self.encoding}: use raw or png')
        if not 0 < self.validation_fraction < 1:
            raise UserInputError(
                f'--validation_fraction={self.validation_fraction}: must be between 0 and 1')
        if self.num_shards < 1:
            raise UserInputError(f'--num_shards={self.num_shards}: must be at least 1')
        if self.sample_images_per_class < 2 or self.sample_test_images < 0:
            raise UserInputError(
                '--sample_images_per_class must be at least 2 and --sample_test_images '
                'not negative')
        return self


UPSAMPLE_PLACES = ('device', 'host')
UPSAMPLE_METHODS = ('bilinear', 'repeat')
NORMALIZATIONS = ('caffe', 'unit')


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How the tf.data pipeline reads and prepares the records."""
    records_dir: str = option('records', 'The records folder written by scripts/convert.py.')
    batch_size: int = option(256, 'Global batch size, split evenly over the replicas.')
    image_size: int = option(224, 'Side the 32x32 images are upsampled to (32: none).')
    # Measured by scripts/benchmark.py --suite=input: upsampling to 224 on the
    # host costs several CPU cores per GPU; on the device it is nearly free.
    upsample_on: str = option('device', (
        'device: the model upsamples and normalizes, and uint8 32x32 images cross to the '
        'accelerator (4x less traffic); host: tf.data does both.'))
    upsample_method: str = option(
        'bilinear', 'bilinear interpolation, or repeat (pixel repetition; needs a multiple of 32).')
    normalization: str = option('caffe', (
        'caffe: BGR, 0..255, ImageNet mean subtracted, as the ResNet50 ImageNet weights '
        'expect; unit: RGB scaled to [0, 1].'))
    augment: bool = option(True, 'Random crop (4-pixel padding) and horizontal flip in training.')
    label_smoothing: float = option(0.1, 'Label smoothing of the one-hot training targets.')
    cache: str = option('memory', 'Cache of decoded images: memory, or a file path prefix.')
    shuffle_buffer_size: int | None = option(
        None, 'Images in the shuffle buffer; default: the whole split (a full shuffle).')
    seed: int = option(0, 'Seed of file order, shuffling and augmentation.')
    data_service: str | None = option(
        None, 'grpc://host:port of a tf.data service dispatcher to preprocess on.')
    verify_checksums: bool = option(
        True, 'Check every shard against its manifest sha256 before reading.')

    def validate(self) -> 'InputConfig':
        """Checks the values a user can get wrong; returns self."""
        if self.batch_size < 1:
            raise UserInputError(f'--batch_size={self.batch_size}: must be at least 1')
        if self.upsample_on not in UPSAMPLE_PLACES:
            raise UserInputError(f'--upsample_on={self.upsample_on}: use device or host')
        if self.upsample_method not in UPSAMPLE_METHODS:
            raise UserInputError(f'--upsample_method={self.upsample_method}: use bilinear or repeat')
        if self.normalization not in NORMALIZATIONS:
            raise UserInputError(f'--normalization={self.normalization}: use caffe or unit')
        if self.image_size < 32:
            raise UserInputError(f'--image_size={self.image_size}: must be at least 32')
        if self.upsample_method == 'repeat' and self.image_size % 32:
            raise UserInputError(
                f'--image_size={self.image_size}: upsampling by repetition needs a multiple of 32')
        if not 0 <= self.label_smoothing < 1:
            raise UserInputError(f'--label_smoothing={self.label_smoothing}: must be in [0, 1)')
        if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 1:
            raise UserInputError(f'--shuffle_buffer_size={self.shuffle_buffer_size}: must be positive')
        if self.data_service and not self.data_service.startswith('grpc://'):
            raise UserInputError(f'--data_service={self.data_service}: expected grpc://host:port')
        return self
