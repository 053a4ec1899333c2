"""Progress lines: counts, rates, time left."""

import pytest

from cifar_tfrecord import progress


@pytest.mark.parametrize('seconds, said', [(12.4, '12 s'), (600, '10 min'), (12000, '3 h 20 min')])
def test_durations_read_as_a_person_says_them(seconds, said):
    assert progress.describe_seconds(seconds) == said


def test_progress_says_how_many_of_how_many_and_the_time_left(monkeypatch, caplog):
    clock = iter([0.0, 10.0, 20.0, 40.0])  # Start, two updates, done.
    monkeypatch.setattr(progress.time, 'perf_counter', lambda: next(clock))
    tracker = progress.Progress('train')
    with caplog.at_level('INFO', logger='absl'):
        tracker.update(1_000)                 # No total known yet.
        tracker.update(1_000, total=8_000)
        tracker.done()
    assert [record.getMessage() for record in caplog.records] == [
        'train: 1,000 images, 100 images/s',
        'train: 2,000 of 8,000 images (25%), 100 images/s, about 60 s left',
        'train: 2,000 images in 40 s, 50 images/s']
