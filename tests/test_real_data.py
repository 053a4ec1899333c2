"""The real CIFAR-10 (../shared/data/cifar-10.zip), converted and checked whole.

Skipped where that file is absent. Every pixel read back through read_split
is compared with the PNG decoded by an independent decoder (PIL), and every
id and label with trainLabels.csv.
"""

import collections
import csv
import io
import os
import zipfile

import numpy as np
import py7zr
import pytest
from PIL import Image

from cifar_tfrecord import records
from conftest import SHARED_DATA, run_script

ZIP_PATH = os.path.join(SHARED_DATA, 'cifar-10.zip')
pytestmark = [pytest.mark.skipif(not os.path.exists(ZIP_PATH), reason='no real CIFAR-10 here'),
              pytest.mark.slow]


def _pngs(archive: zipfile.ZipFile, name: str) -> dict[str, bytes]:
    with py7zr.SevenZipFile(archive.open(name)) as seven_zip:
        factory = py7zr.io.BytesIOFactory(limit=1 << 20)
        seven_zip.extractall(factory=factory)
    return {os.path.basename(path)[:-4]: product.read()
            for path, product in factory.products.items()}


def test_real_data_converts_exactly(tmp_path):
    output = tmp_path / 'records'
    assert run_script('convert', '--source=dir', f'--data_dir={SHARED_DATA}',
                      f'--output_dir={output}') == 0

    with zipfile.ZipFile(ZIP_PATH) as archive:
        labels = {row['id']: row['label']
                  for row in csv.DictReader(io.TextIOWrapper(archive.open('trainLabels.csv')))}
        pngs = {'train': _pngs(archive, 'train.7z'), 'test': _pngs(archive, 'test.7z')}

    seen = collections.defaultdict(collections.Counter)
    for split in records.SPLITS:
        kaggle_set = 'test' if split == 'test' else 'train'
        for image_id, image, label in records.read_split(str(output), split):
            expected = np.asarray(Image.open(io.BytesIO(pngs[kaggle_set].pop(image_id))).convert('RGB'))
            np.testing.assert_array_equal(image, expected, err_msg=f'{split} {image_id}')
            if split == 'test':
                assert label == records.UNKNOWN_LABEL
            else:
                assert records.CLASS_NAMES[label] == labels[image_id], image_id
            seen[split][records.class_name(label)] += 1
    assert pngs == {'train': {}, 'test': {}}, 'every image is in exactly one split'
    assert seen['validation'] == {name: 500 for name in records.CLASS_NAMES}
    assert seen['train'] == {name: 4500 for name in records.CLASS_NAMES}
    assert seen['test'] == {'unknown': 10000}
    assert records.verify(str(output)) == {'train': 45000, 'validation': 5000, 'test': 10000}
