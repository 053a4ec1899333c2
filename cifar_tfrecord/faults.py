"""Fault injection for tests: SIGKILL this process at a named point of its work.

Tests of "a killed run resumes" must kill at a known moment, not after a
sleep that may land anywhere. With the environment variable

    CIFAR_TFRECORD_KILL_AT=<point>:<n>[@<worker index>]

the n-th time this process reaches `reached(<point>)` it writes one line,
`fault injection: killed at <point>:<n>`, to stderr and SIGKILLs itself, as a
real kill: no cleanup. `@<worker index>` limits it to that worker in
TF_CONFIG (a multi-worker job's processes share one environment). With
CIFAR_TFRECORD_KILL_SIGNAL=SIGINT its process group gets SIGINT instead, as
from Ctrl-C in a terminal. The points:

    shard_written       the converter wrote one shard under its temporary name
    shard_published     the converter renamed one shard into place
    manifest_written    the converter wrote the manifest's temporary file
    manifest_published  the manifest is in place; shards it does not list remain
    archive_batch       the converter received a batch of files from its 7z process
    train_step          a training step ended (counted over the whole process)
    backup_written      an epoch's backup is in place; state.json does not name it yet
    epoch_saved         state.json names the epoch's backup; the next epoch has not begun
    inside_save         a file of a run is written whole, not yet renamed into place
"""

import collections
import json
import os
import signal
import sys

ENVIRONMENT_VARIABLE = 'CIFAR_TFRECORD_KILL_AT'
SIGNAL_VARIABLE = 'CIFAR_TFRECORD_KILL_SIGNAL'
KILLED_MESSAGE = 'fault injection: killed at'

_counts = collections.Counter()


def reached(point: str) -> None:
    """Counts a visit to `point`; kills the process on the chosen visit."""
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec:
        return
    spec, _, worker = spec.partition('@')
    target, _, count = spec.rpartition(':')
    if target != point or (worker and int(worker) != _worker_index()):
        return
    _counts[point] += 1
    if _counts[point] == int(count):
        print(f'{KILLED_MESSAGE} {point}:{int(count)}', file=sys.stderr, flush=True)
        number = signal.Signals[os.environ.get(SIGNAL_VARIABLE, 'SIGKILL')]
        if number == signal.SIGINT:
            os.killpg(os.getpgrp(), number)
        else:
            os.kill(os.getpid(), number)


def enabled() -> bool:
    """Whether a kill is asked for: callers may skip hooks that cost more."""
    return bool(os.environ.get(ENVIRONMENT_VARIABLE))


def kill_at(point: str, count: int, worker: int | None = None,
            signal_name: str = 'SIGKILL') -> dict[str, str]:
    """The environment entries that kill at the `count`-th visit of `point`."""
    return {ENVIRONMENT_VARIABLE: f'{point}:{count}' + ('' if worker is None else f'@{worker}'),
            SIGNAL_VARIABLE: signal_name}


def _worker_index() -> int | None:
    tf_config = os.environ.get('TF_CONFIG')
    return json.loads(tf_config)['task']['index'] if tf_config else None
