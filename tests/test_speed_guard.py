"""The input pipeline's speed, guarded: ratios inside one run, never absolute times.

Training takes its epochs from one endless iterator, each epoch cut to
--steps_per_epoch batches. Against the plain in-memory baseline doing the
same work, over the same number of batches, in turns, the pipeline must keep
most of its speed: when the cached split was moved image by image through
tf.data each epoch, and a memory cache cut short by Keras' epochs was thrown
away (and the files read again), this test measured 0.63 to 0.76 on that
code (4303a9a's pipeline), and 1.22 and 1.30 on this one.

The records are real shards of random pixels, as many as CIFAR-10's training
split, written in a second; a small split would time the start of an epoch,
not its cost. The best run of each entry is compared: a shared machine
slows runs down, it never speeds one up.
"""

import numpy as np
import pytest

from cifar_tfrecord import benchmark
from cifar_tfrecord import convert
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord import sources
from cifar_tfrecord.config import ConvertConfig, InputConfig

IMAGES = 50_000
BATCH_SIZE = 256
EPOCHS = 2
REPEATS = 6
# Between the two codes' figures; the issue's target on a quiet machine is 0.95.
MINIMUM_WARM_RATIO = 0.9


class _RandomPixels:
    """A source of `images` random labelled images, given as pixels."""
    sets = ('train',)

    def __init__(self, images: int):
        self.images = images

    def fingerprint(self) -> dict:
        return {'kind': 'random_pixels', 'images': self.images}

    def batches(self, kaggle_set: str, batch_size: int):
        rng = np.random.default_rng(0)
        for start in range(0, self.images, batch_size):
            count = min(batch_size, self.images - start)
            yield sources.SourceBatch(
                [str(number) for number in range(start + 1, start + count + 1)],
                rng.integers(0, 256, (count, *records.IMAGE_SHAPE), np.uint8),
                np.arange(start, start + count) % records.NUM_CLASSES, self.images)


@pytest.fixture(scope='module')
def full_size_records(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp('full_size_records'))
    convert.convert(ConvertConfig(output_dir=output_dir, num_shards=8, validation_fraction=0.1),
                    source=_RandomPixels(IMAGES))
    return output_dir


def _best_ratio(result: benchmark.Result, baseline: benchmark.Result) -> float:
    return min(baseline.runs) / min(result.runs) * result.images / baseline.images


@pytest.mark.slow
def test_warm_epochs_cut_short_keep_the_speed_of_arrays_in_memory(full_size_records):
    config = InputConfig(records_dir=full_size_records, batch_size=BATCH_SIZE, image_size=32,
                         upsample_on='host', augment=False)
    count = records.load_manifest(full_size_records).splits['train'].num_examples
    steps_per_epoch = count // BATCH_SIZE - 1  # Cut short: the cache never sees an epoch end.
    training, _ = pipeline.make_dataset(config, 'train', training=True,
                                        steps_per_epoch=steps_per_epoch)
    entries = {'in_memory': benchmark._warm(benchmark._in_memory_dataset(config),
                                            EPOCHS * steps_per_epoch),
               'pipeline_warm': benchmark._warm(training, EPOCHS * steps_per_epoch)}
    results = {result.name: result
               for result in benchmark.compare(entries, {}, REPEATS)}
    ratio = _best_ratio(results['pipeline_warm'], results['in_memory'])
    assert ratio >= MINIMUM_WARM_RATIO, (
        f'warm pipeline / in memory: {ratio:.2f} (best of {REPEATS}; runs '
        f'{results["pipeline_warm"].runs} against {results["in_memory"].runs})')
