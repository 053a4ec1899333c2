r"""Throughput benchmarks, each against a baseline measured in the same run.

    python scripts/benchmark.py --suite=convert --data_dir=../shared/data \
        --output_json=benchmark_convert.json
    python scripts/benchmark.py --suite=input --records_dir=records \
        --batch_size=256 --output_json=benchmark_input.json
    python scripts/benchmark.py --suite=train --records_dir=records \
        --batch_size=256 --image_size=32 --output_json=benchmark_train.json
    python scripts/benchmark.py --suite=data_service --records_dir=records \
        --batch_size=256 --service_workers=2 --output_json=benchmark_service.json

Each entry runs --repeats times, in turns with the others: the table gives
its median throughput, the range of its runs, and flags an entry whose runs
differ by more than 10%. --output_json gets {"results": [{"name": ...,
"images_per_second": ..., "runs": [seconds, ...], "spread": ..., "noisy": ...,
"baseline": ..., "speedup": ..., "peak_resident_bytes": ...}, ...]}. The
convert suite also prints the converter's peak resident memory against its
floor's, each measured in a process of its own; the train suite adds
"time_to_first_step_s" of the quick-start and CPU recipes.
"""

import json
import os
import statistics

from cifar_tfrecord import cli
from cifar_tfrecord.config import BenchmarkConfig

cli.define_flags(BenchmarkConfig)


def main(argv):
    cli.no_arguments(argv)
    config = cli.config_from_flags(BenchmarkConfig)
    from cifar_tfrecord import benchmark  # Loads TensorFlow: after cli.run has quietened it.
    repeats = config.runs_per_measurement()
    if config.suite == 'convert':
        results = benchmark.convert_suite(config.data_dir, repeats)
    elif config.suite == 'input':
        results = benchmark.input_suite(config.records_dir, config.batch_size, repeats)
    elif config.suite == 'data_service':
        results = benchmark.data_service_suite(config.records_dir, config.batch_size, repeats,
                                               config.service_workers)
    else:
        results = benchmark.train_suite(config.records_dir, config.batch_size, config.image_size,
                                        config.steps, repeats=repeats)
    print(f'{"name":<34} {"images/s":>10} {"min-max":>17} {"seconds":>8}  vs baseline')
    for result in results:
        versus = (f'{result.speedup:.2f}x {result.baseline}' if result.baseline else 'baseline')
        noisy = (f'  noisy: runs {result.spread:.0%} apart'
                 if result.spread > benchmark.NOISY_SPREAD else '')
        fastest, slowest = (result.images / seconds for seconds in (min(result.runs),
                                                                    max(result.runs)))
        print(f'{result.name:<34} {result.images_per_second:>10,.0f} '
              f'{slowest:>8,.0f}-{fastest:<8,.0f} {result.seconds:>8.2f}  {versus}{noisy}')
    summaries = {'convert': _print_memory_summary, 'input': _print_input_summary,
                 'train': _print_train_summary}
    if config.suite in summaries:
        summaries[config.suite](results)
    report = {'results': [result.to_json() for result in results]}
    if config.suite == 'train':
        first_step = benchmark.time_to_first_step(config.records_dir, repeats)
        for recipe, runs in first_step.items():
            print(f'time to first step, recipes/{recipe}.flags: {statistics.median(runs):.1f} s '
                  f'(median; {min(runs):.1f}-{max(runs):.1f} s), from the start of train.py')
        report['time_to_first_step_s'] = {
            recipe: {'median': round(statistics.median(runs), 2),
                     'runs': [round(run, 2) for run in runs]} for recipe, runs in first_step.items()}
    if config.output_json:
        with open(config.output_json, 'w') as file:
            json.dump(report, file, indent=2)


def _print_memory_summary(results):
    by_name = {result.name: result for result in results}
    converter, floor = by_name['convert_zip_process'], by_name['decompress_7z_process']
    print(f'peak resident memory: the converter {converter.peak_resident_bytes / 2**20:,.0f} MB '
          f'(with its 7z process), its floor {floor.peak_resident_bytes / 2**20:,.0f} MB '
          '(what it imports, and py7zr decompressing the same archives)')


# One GPU training ResNet50 at 224 px consumes about this many images/s.
GPU_IMAGES_PER_SECOND = 3000
# Training fed from the records at this fraction of the speed on one batch
# held in memory, or more, is not held back by its input: the two differ by
# less than the noise of a shared machine.
INPUT_KEEPS_UP = 0.95


def _print_input_summary(results):
    by_name = {result.name: result for result in results}
    augmented = by_name['pipeline_warm_augmented'].images_per_second / os.cpu_count()
    upsampled = by_name['pipeline_host_upsample_224'].images_per_second / os.cpu_count()
    print(f'pipeline_warm_augmented: {augmented:,.0f} images/s per CPU core')
    print(f'host upsampling to 224 needs {GPU_IMAGES_PER_SECOND / upsampled:.1f} CPU cores '
          f'to feed one GPU at {GPU_IMAGES_PER_SECOND:,} images/s; on the device it '
          f'needs none (--upsample_on=device)')


def _print_train_summary(results):
    fed = {result.name: result for result in results}['train_pipeline']
    verdict = ('input keeps up with training' if fed.speedup >= INPUT_KEEPS_UP
               else 'input holds training back: add CPU, or preprocess elsewhere '
                    '(--data_service)')
    print(f'fed from the records at {fed.speedup:.2f}x the speed of one batch held in '
          f'memory: {verdict}')


if __name__ == '__main__':
    cli.run(main)
