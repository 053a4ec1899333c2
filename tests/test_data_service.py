"""scripts/data_service.py: a real dispatcher and worker in another process."""

import collections
import os
import socket
import subprocess
import sys

import numpy as np

from cifar_tfrecord import pipeline
from cifar_tfrecord import records
from cifar_tfrecord.config import InputConfig
from conftest import SCRIPTS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('localhost', 0))
        return probe.getsockname()[1]


def test_service_script_feeds_the_pipeline(sample_records):
    port = _free_port()
    service = subprocess.Popen(
        [sys.executable, os.path.join(SCRIPTS, 'data_service.py'), f'--port={port}',
         '--num_workers=2'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert 'dispatcher' in service.stdout.readline()  # Printed once serving.
        config = InputConfig(records_dir=sample_records, batch_size=10, image_size=32,
                             label_smoothing=0.0, data_service=f'grpc://localhost:{port}')
        dataset, _ = pipeline.make_dataset(config, 'validation', training=False)
        found = collections.Counter(
            (image.tobytes(), int(np.argmax(target)))
            for images, targets in dataset.as_numpy_iterator()
            for image, target in zip(images, targets))
        expected = collections.Counter(
            (image.tobytes(), label)
            for _, image, label in records.read_split(sample_records, 'validation'))
        assert found == expected
    finally:
        service.kill()
        service.wait()
