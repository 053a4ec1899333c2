r"""Converts CIFAR-10 into sharded TFRecords with a manifest.

    python scripts/convert.py                                # auto: see --source
    python scripts/convert.py --source=dir --data_dir=../shared/data
    python scripts/convert.py --source=kaggle                # needs Kaggle credentials
    python scripts/convert.py --source=sample                # offline, generated
    python scripts/convert.py --verify --output_dir=records  # check against the manifest

Writes `--output_dir` (default records/): <split>-NNNNN-of-NNNNN.tfrecord
shards for train, validation and test, then manifest.json.
"""

from cifar_tfrecord import cli
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig

cli.define_flags(ConvertConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(ConvertConfig)
    # Made before TensorFlow loads, which takes seconds: the source's 7z
    # archives decompress meanwhile, in processes of their own.
    source = None if config.verify else sources.make_source(config)
    # Loads TensorFlow: after cli.run has quietened it.
    from cifar_tfrecord import convert, records
    if config.verify:
        counts = records.verify(config.output_dir)
        print(f'{config.output_dir}: verified ' + ', '.join(
            f'{split} {count} records' for split, count in counts.items()))
        return
    manifest = convert.convert(config, source)
    print(f'{config.output_dir}: ' + ', '.join(
        f'{name} {split.num_examples} images in {len(split.shards)} shards'
        for name, split in manifest.splits.items()))


if __name__ == '__main__':
    cli.run(main, interrupted=(
        'nothing was written, and records already there are as they were; rerun the same '
        'command to convert'))
