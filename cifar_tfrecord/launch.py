"""A multi-worker job on one machine: N copies of a command, one cluster.

Each copy gets its own TF_CONFIG, as on separate hosts. Each worker's output
is prefixed with its index; when one fails the others are stopped, since a
worker left alone would wait forever in its next collective operation.
"""

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from cifar_tfrecord.config import LaunchConfig

_POLL_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    """How each worker ended; `failed` is the first worker seen to fail, if any."""
    statuses: tuple[int, ...]
    failed: int | None
    interrupted: bool = False  # The launcher got SIGINT (Ctrl-C) and passed it on.


def free_ports(host: str, count: int) -> list[int]:
    """Ports free on `host`; each is held until all are chosen, so they differ."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


def describe_status(status: int) -> str:
    """'exit status 2', or 'killed by SIGKILL' for a negative Popen status."""
    return f'killed by {signal.Signals(-status).name}' if status < 0 else f'exit status {status}'


def launch(config: LaunchConfig, command: list[str]) -> LaunchResult:
    """Runs `command` as each worker of a local cluster, and waits for all;
    when one fails, stops the others."""
    config.validate()
    addresses = [f'{config.host}:{port}' for port in free_ports(config.host, config.num_workers)]
    workers = [_start(command, addresses, index) for index in range(config.num_workers)]
    print_lock = threading.Lock()
    readers = [threading.Thread(target=_copy_output, args=(worker, index, print_lock), daemon=True)
               for index, worker in enumerate(workers)]
    for reader in readers:
        reader.start()
    with _forwarding_signals(workers) as received:
        failed = _wait(workers)
        if failed is not None:
            _stop(workers, config.stop_seconds)
    for reader in readers:
        reader.join()
    return LaunchResult(tuple(worker.returncode for worker in workers), failed,
                        interrupted=signal.SIGINT in received)


def _start(command: list[str], addresses: list[str], index: int) -> subprocess.Popen:
    # Without a 'chief' task, worker 0 is the chief.
    tf_config = {'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': index}}
    environment = dict(os.environ, TF_CONFIG=json.dumps(tf_config), PYTHONUNBUFFERED='1')
    # A session of its own: a Ctrl-C reaches the worker once, forwarded by
    # the launcher, rather than twice.
    worker = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    print(f'worker {index}: pid {worker.pid}, {addresses[index]}', flush=True)
    return worker


def _copy_output(worker: subprocess.Popen, index: int, print_lock: threading.Lock) -> None:
    for line in worker.stdout:
        with print_lock:
            sys.stdout.write(f'[worker {index}] {line}')
            sys.stdout.flush()


def _wait(workers: list[subprocess.Popen]) -> int | None:
    """Waits until every worker succeeded (None) or one failed (its index)."""
    while True:
        statuses = [worker.poll() for worker in workers]
        failed = [index for index, status in enumerate(statuses) if status not in (None, 0)]
        if failed or all(status == 0 for status in statuses):
            return failed[0] if failed else None
        time.sleep(_POLL_SECONDS)


def _stop(workers: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM to the workers still running, then SIGKILL after the grace time."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + grace_seconds
    for worker in workers:
        try:
            worker.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@contextlib.contextmanager
def _forwarding_signals(workers: list[subprocess.Popen]):
    """Within the block, SIGINT and SIGTERM to the launcher go to the workers,
    which then fail. Yields the list of the signals received. Handlers can
    only be set from the main thread; elsewhere this does nothing."""
    received = []

    def forward(number, frame):
        received.append(number)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(number)

    previous = {number: signal.signal(number, forward)
                for number in (signal.SIGINT, signal.SIGTERM)
                if threading.current_thread() is threading.main_thread()}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
