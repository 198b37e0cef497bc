"""Progress lines for long work: one line per 10 % (and the last one)."""
import sys
import time


class Progress:
    def __init__(self, total, what, stream=None, enabled=True, min_total=5000):
        """Silent when total < min_total (short work needs no progress lines)."""
        self.total = int(total)
        self.what = what
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = enabled and self.total >= max(1, min_total)
        self.done = 0
        self._next_decile = 1
        self._t0 = time.monotonic()

    def update(self, n=1):
        self.done += n
        if not self.enabled:
            return
        while self._next_decile <= 10 and self.done * 10 >= self._next_decile * self.total:
            print(f'  {self.what}: {self.done}/{self.total} ({self._next_decile * 10}%, '
                  f'{time.monotonic() - self._t0:.1f} s)', file=self.stream, flush=True)
            self._next_decile += 1
