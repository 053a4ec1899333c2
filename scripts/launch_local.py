r"""Runs a multi-worker training job on this machine, one process per worker.

    python scripts/launch_local.py --num_workers=2 -- \
        --records_dir=records --model_dir=runs/two_workers --batch_size=256

Everything after `--` goes to every worker's scripts/train.py. Each worker
gets a TF_CONFIG naming free ports on localhost; worker 0 is the chief and
alone writes into --model_dir (the others write to temporary folders, which
they remove). Output lines are prefixed with `[worker N]`. Waits for all the
workers; if one fails the others are stopped and the exit status is 1.
Rerunning the same command after a failure resumes the job.
"""

import os
import sys

from cifar_tfrecord import cli
from cifar_tfrecord import launch
from cifar_tfrecord.config import LaunchConfig
from cifar_tfrecord.errors import Interrupted, UserInputError

cli.define_flags(LaunchConfig)
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


def main(argv):
    train_arguments = argv[1:]
    if not train_arguments:
        raise UserInputError('no training flags: put them after --, as in '
                             'launch_local.py --num_workers=2 -- --records_dir=records ...')
    config = cli.config_from_flags(LaunchConfig)
    result = launch.launch(config, [sys.executable, TRAIN_SCRIPT, *train_arguments])
    if result.interrupted:
        raise Interrupted('the workers stopped, each keeping the finished epochs; rerun the '
                          'same command to resume')
    if result.failed is not None:
        status = launch.describe_status(result.statuses[result.failed])
        # A failed run, not bad input; reported the same way, in one line.
        print(f'error: worker {result.failed} failed ({status}); the other workers were '
              'stopped. Rerun the same command to resume.', file=sys.stderr)
        sys.exit(1)
    print(f'all {config.num_workers} workers finished')


if __name__ == '__main__':
    cli.run(main)
