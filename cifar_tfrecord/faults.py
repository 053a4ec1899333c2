"""Fault injection for tests: SIGKILL this process at a named point of its work.

Tests of "a killed run resumes" must kill at a known moment, not after a
sleep that may land anywhere. With the environment variable

    CIFAR_TFRECORD_KILL_AT=<point>:<n>[@<worker index>]

the n-th time this process reaches `reached(<point>)` it writes one line,
`fault injection: killed at <point>:<n>`, to stderr and SIGKILLs itself: no
cleanup, no flush of anything else, as a real kill. `@<worker index>` limits
it to the worker of that index in TF_CONFIG (a multi-worker job's processes
share one environment). With CIFAR_TFRECORD_KILL_SIGNAL=SIGINT its process
group gets SIGINT instead, as from Ctrl-C in a terminal (start the process in
a session of its own). The points are named where they are reached:

    shard_written       the converter wrote one shard under its temporary name
    shard_published     the converter renamed one shard into place
    manifest_written    the converter wrote the manifest's temporary file, not
                        yet renamed
    manifest_published  the converter's manifest is in place; shards it does
                        not list are not yet removed
    archive_batch       the converter received a batch of files from its 7z process
    train_step          a training step ended (counted over the whole process)
    backup_written      an epoch's backup is in place; state.json does not name it yet
    epoch_saved         state.json names the epoch's backup; the next epoch has not begun
    inside_save         a file of a run is written whole, not yet renamed into place

Unset, `reached` costs one environment lookup.
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
    """Counts a visit to `point`; SIGKILLs the process on the chosen visit."""
    spec = os.environ.get(ENVIRONMENT_VARIABLE)
    if not spec:
        return
    target, worker = _parse(spec)
    if target[0] != point or (worker is not None and worker != _worker_index()):
        return
    _counts[point] += 1
    if _counts[point] == target[1]:
        sys.stderr.write(f'{KILLED_MESSAGE} {point}:{target[1]}\n')
        sys.stderr.flush()
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


def _parse(spec: str) -> tuple[tuple[str, int], int | None]:
    spec, _, worker = spec.partition('@')
    point, _, count = spec.rpartition(':')
    return (point, int(count)), int(worker) if worker else None


def _worker_index() -> int | None:
    tf_config = os.environ.get('TF_CONFIG')
    return json.loads(tf_config)['task']['index'] if tf_config else None
