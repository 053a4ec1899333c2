r"""Throughput benchmarks, each against a baseline measured in the same run.

    python scripts/benchmark.py --suite=convert --data_dir=../shared/data \
        --output_json=benchmark_convert.json
    python scripts/benchmark.py --suite=input --records_dir=records \
        --batch_size=256 --output_json=benchmark_input.json
    python scripts/benchmark.py --suite=train --records_dir=records \
        --batch_size=256 --image_size=32 --output_json=benchmark_train.json
    python scripts/benchmark.py --suite=data_service --records_dir=records \
        --batch_size=256 --service_workers=2 --output_json=benchmark_service.json

Prints a table and writes --output_json as {"results": [{"name": ...,
"images_per_second": ..., "baseline": ..., "speedup": ...}, ...]}.
"""

import json

from absl import flags

from cifar_tfrecord import benchmark
from cifar_tfrecord import cli

SUITES = ('convert', 'input', 'train', 'data_service')
flags.DEFINE_enum('suite', 'convert', SUITES, 'Which measurements to run.')
flags.DEFINE_string('data_dir', '../shared/data',
                    'Folder (or zip) with Kaggle\'s cifar-10.zip, for --suite=convert.')
flags.DEFINE_string('records_dir', 'records', 'Converted records, for every suite but convert.')
flags.DEFINE_integer('batch_size', 256, 'Global batch size, for every suite but convert.')
flags.DEFINE_integer('image_size', 32, 'Model input side, for --suite=train.')
flags.DEFINE_integer('service_workers', 2,
                     'tf.data service workers started in-process, for --suite=data_service.')
flags.DEFINE_integer('steps', 10, 'Timed training steps, for --suite=train.')
flags.DEFINE_integer('repeats', None, 'Runs per measurement; the fastest is kept '
                     '(default: 1 for convert, 2 for train, 3 for input and data_service).')
flags.DEFINE_string('output_json', None, 'Where to write the results as JSON.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.suite == 'convert':
        results = benchmark.convert_suite(FLAGS.data_dir, FLAGS.repeats or 1)
    elif FLAGS.suite == 'input':
        results = benchmark.input_suite(FLAGS.records_dir, FLAGS.batch_size, FLAGS.repeats or 3)
    elif FLAGS.suite == 'data_service':
        results = benchmark.data_service_suite(FLAGS.records_dir, FLAGS.batch_size,
                                               FLAGS.repeats or 3, FLAGS.service_workers)
    else:
        results = benchmark.train_suite(FLAGS.records_dir, FLAGS.batch_size, FLAGS.image_size,
                                        FLAGS.steps, repeats=FLAGS.repeats or 2)
    print(f'{"name":<34} {"images/s":>10} {"seconds":>9}  vs baseline')
    for result in results:
        versus = (f'{result.speedup:.2f}x {result.baseline}' if result.baseline else 'baseline')
        print(f'{result.name:<34} {result.images_per_second:>10,.0f} '
              f'{result.seconds:>9.2f}  {versus}')
    if FLAGS.suite == 'input':
        _print_input_summary(results)
    if FLAGS.suite == 'train':
        _print_train_summary(results)
    if FLAGS.output_json:
        with open(FLAGS.output_json, 'w') as file:
            json.dump({'results': [result.to_json() for result in results]}, file, indent=2)


def _print_input_summary(results):
    by_name = {result.name: result for result in results}
    augmented = by_name['pipeline_warm_augmented']
    upsampled = by_name['pipeline_host_upsample_224']
    print(f'pipeline_warm_augmented: {benchmark.per_core(augmented):,.0f} images/s per CPU core')
    print(f'host upsampling to 224 needs {benchmark.cores_to_feed_a_gpu(upsampled):.1f} CPU cores '
          f'to feed one GPU at {benchmark.GPU_IMAGES_PER_SECOND:,} images/s; on the device it '
          f'needs none (--upsample_on=device)')


def _print_train_summary(results):
    fed = {result.name: result for result in results}['train_pipeline']
    verdict = ('input keeps up with training' if fed.speedup >= benchmark.INPUT_KEEPS_UP
               else 'input holds training back: add CPU, or preprocess elsewhere '
                    '(--data_service)')
    print(f'fed from the records at {fed.speedup:.2f}x the speed of one batch held in '
          f'memory: {verdict}')


if __name__ == '__main__':
    cli.run(main)
