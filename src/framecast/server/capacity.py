"""Capacity: a cost model of engine passes measured live, and the admission rule built on it.

A pass over rows with U chunks in flight in all takes about a + b * U seconds (forward and decode): `a` is
the fixed cost (kernel launches, Python), `b` the cost per chunk of tokens. Both are fit by exponentially
weighted least squares over recent passes, so the model follows the machine as its load changes.

A streaming session i at target frame rate f_i with chunks of c frames needs r_i = f_i / c passes a second
(stream batch: one finished chunk per pass), each carrying u_i = steps_i + 1 chunks. Sessions due together
share passes, so the engine is busy about

    load = a * max_i r_i + b * sum_i r_i * u_i      (seconds of engine time per second)

A new session is admitted only while the load with it stays at or under `max_utilization`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """What one streaming session asks of the engine: passes per second, chunks per pass."""

    rate: float
    units: int


class CostModel:
    """Seconds per pass as a + b * units, from recent observations (weights decay by `decay` a pass)."""

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self._n = self._x = self._y = self._xx = self._xy = 0.0
        self.observations = 0

    def observe(self, units: int, seconds: float) -> None:
        d, x, y = self.decay, float(units), float(seconds)
        self._n, self._x, self._y = d * self._n + 1, d * self._x + x, d * self._y + y
        self._xx, self._xy = d * self._xx + x * x, d * self._xy + x * y
        self.observations += 1

    def coefficients(self) -> tuple[float, float]:
        """(a, b): fixed seconds per pass and seconds per chunk; (0, 0) before any observation."""
        if self._n == 0 or self._x <= 0:
            return 0.0, 0.0
        mx, my = self._x / self._n, self._y / self._n
        var = self._xx / self._n - mx * mx
        if var <= 1e-6 * mx * mx:  # one batch size seen: assume no fixed cost (the pessimistic reading)
            return 0.0, my / mx
        b = (self._xy / self._n - mx * my) / var
        a = my - b * mx
        if b < 0:
            return my, 0.0
        if a < 0:
            return 0.0, my / mx
        return a, b

    def predict(self, units: int) -> float:
        a, b = self.coefficients()
        return a + b * units

    def load(self, demands: list[Demand]) -> float:
        """Predicted engine seconds per second for these sessions."""
        if not demands:
            return 0.0
        a, b = self.coefficients()
        return a * max(d.rate for d in demands) + b * sum(d.rate * d.units for d in demands)
