"""Pick the torch CPU thread count of a long job on a machine whose cores other processes share."""

from __future__ import annotations

import torch


class AdaptiveThreads:
    """Switch between 1 and 2 torch threads by timing both now and then: two threads busy-wait badly when
    other processes share the two cores, one thread is half as fast when they do not.

    Every ``period`` recorded steps, the first ``probe`` run with the current count and the next ``probe``
    with the other; the faster median then stays until the next period.
    """

    def __init__(self, period: int = 200, probe: int = 6):
        self.period, self.probe = period, probe
        self.count = 0
        self.times: dict[int, list[float]] = {1: [], 2: []}

    def record(self, seconds: float) -> None:
        """Record the wall-clock of one step run with the current thread count; may change the count."""
        n = torch.get_num_threads()
        phase = self.count % self.period
        self.count += 1
        if phase >= 2 * self.probe:
            return
        self.times.setdefault(n, []).append(seconds)
        if phase == self.probe - 1:
            torch.set_num_threads(2 if n == 1 else 1)
        elif phase == 2 * self.probe - 1:
            best = min(self.times, key=lambda k: sorted(self.times[k])[len(self.times[k]) // 2]
                       if self.times[k] else float("inf"))
            torch.set_num_threads(best)
            self.times = {1: [], 2: []}
