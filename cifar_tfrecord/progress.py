"""How far long work has got, said in one line: counts, rates, time left."""

import time

from absl import logging

# Seconds between two progress lines of the same work.
PROGRESS_SECONDS = 5.0


def describe_seconds(seconds: float) -> str:
    """A duration as a person says it: '45 s', '12 min', '3 h 20 min'."""
    if seconds < 90:
        return f'{seconds:.0f} s'
    minutes = round(seconds / 60)
    return f'{minutes} min' if minutes < 90 else f'{minutes // 60} h {minutes % 60} min'


class Progress:
    """Logs every few seconds, as 'train: 12,288 of 50,000 images (25%), 3,106
    images/s, about 12 s left', how far the work has got."""

    def __init__(self, name: str, unit: str = 'images'):
        self._name, self._unit = name, unit
        self._count, self._total = 0, None
        self._start = self._last = time.perf_counter()

    def update(self, count: int, total: int | None = None) -> None:
        """Adds `count` done; `total`, when known, is how many there are in all."""
        self._count += count
        self._total = total or self._total
        now = time.perf_counter()
        if now - self._last >= PROGRESS_SECONDS:
            self._last = now
            logging.info('%s', self._line(now))

    def done(self) -> None:
        seconds = max(time.perf_counter() - self._start, 1e-9)
        logging.info('%s: %s %s in %s, %s %s/s', self._name, f'{self._count:,}', self._unit,
                     describe_seconds(seconds), f'{self._count / seconds:,.0f}', self._unit)

    def _line(self, now: float) -> str:
        rate = self._count / max(now - self._start, 1e-9)
        if not self._total:
            return f'{self._name}: {self._count:,} {self._unit}, {rate:,.0f} {self._unit}/s'
        left = max(self._total - self._count, 0) / max(rate, 1e-9)
        return (f'{self._name}: {self._count:,} of {self._total:,} {self._unit} '
                f'({self._count / self._total:.0%}), {rate:,.0f} {self._unit}/s, about '
                f'{describe_seconds(left)} left')
