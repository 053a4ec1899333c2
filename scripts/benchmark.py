r"""Throughput benchmarks, each against a baseline measured in the same run.

    python scripts/benchmark.py --suite=convert --data_dir=../shared/data \
        --output_json=benchmark_convert.json

Prints a table and writes --output_json as {"results": [{"name": ...,
"images_per_second": ..., "baseline": ..., "speedup": ...}, ...]}.
"""

import json

from absl import flags

from cifar_tfrecord import benchmark
from cifar_tfrecord import cli

SUITES = ('convert',)
flags.DEFINE_enum('suite', 'convert', SUITES, 'Which measurements to run.')
flags.DEFINE_string('data_dir', '../shared/data',
                    'Folder (or zip) with Kaggle\'s cifar-10.zip, for --suite=convert.')
flags.DEFINE_integer('repeats', 1, 'Runs per measurement; the fastest is kept.')
flags.DEFINE_string('output_json', None, 'Where to write the results as JSON.')
FLAGS = flags.FLAGS


def main(argv):
    del argv
    results = benchmark.convert_suite(FLAGS.data_dir, FLAGS.repeats)
    print(f'{"name":<28} {"images/s":>10} {"seconds":>9}  vs baseline')
    for result in results:
        versus = (f'{result.speedup:.2f}x {result.baseline}' if result.baseline else 'baseline')
        print(f'{result.name:<28} {result.images_per_second:>10,.0f} '
              f'{result.seconds:>9.2f}  {versus}')
    if FLAGS.output_json:
        with open(FLAGS.output_json, 'w') as file:
            json.dump({'results': [result.to_json() for result in results]}, file, indent=2)


if __name__ == '__main__':
    cli.run(main)
