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
