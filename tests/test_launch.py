"""scripts/launch_local.py: local clusters, and a two-worker job killed and rerun."""

import json
import os
import re
import signal
import subprocess
import sys
import pytest

from cifar_tfrecord import faults
from cifar_tfrecord import launch
from cifar_tfrecord.config import LaunchConfig
from conftest import SCRIPTS, SMALL_TRAINING, read_history, run_script

# Prints its TF_CONFIG and saves it as <index>.json in the folder it is given.
# Worker 1 then fails, once worker 0 has saved its own; worker 0 waits to be stopped.
_FAILING_WORKER = """
import json, os, pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
index = json.loads(os.environ['TF_CONFIG'])['task']['index']
print(os.environ['TF_CONFIG'], flush=True)
(folder / f'{index}.partial').write_text(os.environ['TF_CONFIG'])
(folder / f'{index}.partial').rename(folder / f'{index}.json')
while index == 1 and not (folder / '0.json').exists():
    time.sleep(0.01)
if index == 1:
    sys.exit(3)
time.sleep(600)
"""


def test_each_worker_gets_its_tf_config_and_a_failure_stops_the_others(tmp_path, capfd):
    result = launch.launch(LaunchConfig(num_workers=2),
                           [sys.executable, '-c', _FAILING_WORKER, str(tmp_path)])
    assert result.failed == 1
    assert result.statuses == (-signal.SIGTERM, 3)
    configs = [json.loads((tmp_path / f'{index}.json').read_text()) for index in (0, 1)]
    assert [config['task'] for config in configs] == [{'type': 'worker', 'index': 0},
                                                      {'type': 'worker', 'index': 1}]
    addresses = configs[0]['cluster']['worker']
    assert len(set(addresses)) == 2 and configs[1]['cluster'] == {'worker': addresses}
    output = capfd.readouterr().out
    for index, config in enumerate(configs):  # Each line prefixed with its worker.
        assert f'[worker {index}] {json.dumps(config)}' in output


# A launcher of two workers that sleep until stopped; prints how they ended.
_LAUNCH_SLEEPERS = (
    'import sys\n'
    'from cifar_tfrecord import launch\n'
    'from cifar_tfrecord.config import LaunchConfig\n'
    'sleeper = "import time; print(\'ready\', flush=True); time.sleep(600)"\n'
    'result = launch.launch(LaunchConfig(num_workers=2), [sys.executable, "-c", sleeper])\n'
    'print("statuses", *result.statuses, "interrupted", result.interrupted)\n')


@pytest.mark.parametrize('number', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_reaches_every_worker(number):
    launcher = subprocess.Popen([sys.executable, '-c', _LAUNCH_SLEEPERS],
                                stdout=subprocess.PIPE, text=True)
    ready = 0
    while ready < 2:
        line = launcher.stdout.readline()
        assert line, 'the launcher ended early'
        ready += line.endswith('] ready\n')
    launcher.send_signal(number)
    output, _ = launcher.communicate(timeout=60)
    # Ctrl-C is told apart: launch_local.py then says the job was interrupted.
    assert (f'statuses -{number.value} -{number.value} interrupted '
            f'{number == signal.SIGINT}') in output


@pytest.mark.parametrize('arguments, message', [
    (['--num_workers=0', '--', '--model_dir=x'], 'error: --num_workers=0: must be at least 1'),
    (['--num_workers=2'], 'error: no training flags: put them after --'),
])
def test_bad_flags_are_refused(capsys, arguments, message):
    assert run_script('launch_local', *arguments) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(message)


# ----------------------------------------------------------------------------
# Two real workers training ResNet50, one of them killed, the job rerun.

_DIGEST = re.compile(r'^\[worker (\d+)\] .*Final weights: sha256 ([0-9a-f]{64})$', re.MULTILINE)


def _launch(records_dir, model_dir, kill_at=None):
    """A two-worker job through launch_local.py; its output, stderr included."""
    # From scratch: two epochs of two steps; four images per worker a step.
    command = [sys.executable, os.path.join(SCRIPTS, 'launch_local.py'), '--num_workers=2', '--',
               f'--records_dir={records_dir}', f'--model_dir={model_dir}', *SMALL_TRAINING,
               '--steps_per_epoch=2', '--mixed_precision=float32', '--freeze_epochs=0',
               '--fine_tune_epochs=2', '--noexport_saved_model', '--deterministic']
    environment = {key: value for key, value in os.environ.items()
                   if key != faults.ENVIRONMENT_VARIABLE}
    environment.update(faults.kill_at(*kill_at) if kill_at else {})
    return subprocess.run(command, capture_output=True, text=True, env=environment)


@pytest.mark.slow
def test_two_workers_killed_and_rerun_end_as_an_uninterrupted_job(sample_records, tmp_path):
    reference = _launch(sample_records, tmp_path / 'reference')
    assert reference.returncode == 0, reference.stdout[-3000:]
    expected = dict(_DIGEST.findall(reference.stdout))
    assert sorted(expected) == ['0', '1'] and len(set(expected.values())) == 1

    model_dir = tmp_path / 'run'
    # Worker 1 dies in the middle of epoch 2, after both backed up epoch 1.
    killed = _launch(sample_records, model_dir, kill_at=('train_step', 3, 1))
    assert killed.returncode == 1
    assert f'[worker 1] {faults.KILLED_MESSAGE} train_step:3' in killed.stdout
    assert 'error: worker 1 failed (killed by SIGKILL)' in killed.stderr
    assert 'Input pipeline 1 of 2 reads its own shard files.' in killed.stdout
    assert (model_dir / '.worker-1').is_dir()  # Left by the killed worker.
    assert not (model_dir / 'final.keras').exists()
    pids = [int(pid) for pid in re.findall(r'^worker \d+: pid (\d+),', killed.stdout, re.MULTILINE)]
    for pid in pids:  # The launcher stopped the chief too.
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    rerun = _launch(sample_records, model_dir)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    for index in (0, 1):  # Both resumed from the chief's backup of epoch 1.
        assert f'[worker {index}] Epoch 2/2' in rerun.stdout
        assert f'[worker {index}] Epoch 1/2' not in rerun.stdout
    # The workers hold the same weights, and the uninterrupted job's.
    assert dict(_DIGEST.findall(rerun.stdout)) == expected
    assert [(row['epoch'], row['phase']) for row in read_history(model_dir)] == [
        ('1', 'fine_tune'), ('2', 'fine_tune')]
    assert sorted(os.listdir(model_dir)) == [
        'best.json', 'best.keras', 'config.json', 'final.keras', 'history.csv', 'logs',
        'metrics.json', 'predictions.npz', 'state.json']
    with open(model_dir / 'config.json') as file:
        resolved = json.load(file)
    assert resolved['replicas'] == 2 and 'MultiWorkerMirroredStrategy' in resolved['strategy']
