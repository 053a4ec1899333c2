"""scripts/data_service.py: a real dispatcher and worker in another process."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_tfrecord import launch
from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord.config import InputConfig
from conftest import SCRIPTS, SMALL_TRAINING, read_history


def _free_port() -> int:
    return launch.free_ports('localhost', 1)[0]


@pytest.mark.slow
def test_service_script_feeds_the_pipeline(sample_records):
    port = _free_port()
    service = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, 'data_service.py'), f'--port={port}',
         # One worker: with several, each drops its own last partial batch.
         '--num_workers=1'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert 'dispatcher' in service.stdout.readline()  # Printed once serving.
        config = InputConfig(records_dir=sample_records, batch_size=10, image_size=32,
                             augment=False, label_smoothing=0.0,
                             data_service=f'grpc://localhost:{port}')
        dataset, count = pipeline.make_dataset(config, 'train', training=True)
        found = collections.Counter(
            (image.tobytes(), int(np.argmax(target)))
            for images, targets in dataset.take(count // 10).as_numpy_iterator()
            for image, target in zip(images, targets))
        expected = collections.Counter(
            (image.tobytes(), label)
            for _, image, label in records.read_split(sample_records, 'train'))
        assert found == expected
    finally:
        service.kill()
        service.wait()


@pytest.mark.slow
def test_two_workers_train_through_the_service_script(sample_records, tmp_path):
    port = _free_port()
    service_log = tmp_path / 'service.log'
    with open(service_log, 'w') as log:
        service = subprocess.Popen(
            [sys.executable, os.path.join(SCRIPTS, 'data_service.py'), f'--port={port}',
             '--num_workers=2'], stdout=subprocess.PIPE, stderr=log, text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0'))
    try:
        assert 'dispatcher' in service.stdout.readline()
        model_dir = tmp_path / 'run'
        # Two training workers share one service job: each batch goes to one
        # of them (tests/test_pipeline.py checks each image comes once an
        # epoch across the workers of a job).
        job = subprocess.run(
            [sys.executable, os.path.join(SCRIPTS, 'launch_local.py'), '--num_workers=2', '--',
             f'--records_dir={sample_records}', f'--model_dir={model_dir}',
             f'--data_service=grpc://localhost:{port}', *SMALL_TRAINING, '--freeze_epochs=0',
             '--fine_tune_epochs=2', '--steps_per_epoch=2', '--mixed_precision=float32',
             '--noexport_saved_model'], capture_output=True, text=True)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-1000:]
    finally:
        service.kill()
        service.wait()
    # The service's workers, another process, read the shards for training.
    assert 'TFRecordDataset' in service_log.read_text()
    history = read_history(model_dir)
    assert [row['epoch'] for row in history] == ['1', '2']
    assert all(float(row['val_accuracy']) >= 0 for row in history)
    config = json.loads((model_dir / 'config.json').read_text())
    assert config['replicas'] == 2
    metrics = json.loads((model_dir / 'metrics.json').read_text())
    assert metrics['examples'] == 20  # The whole validation split, read here.
