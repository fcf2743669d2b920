"""Samples, their summaries, and the ratios against supervisord."""

from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass
class Series:
    values: list[float] = dataclasses.field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None


class Results:
    """Samples by (figure, system). Samples of one figure are taken in the same
    order for every system (interleaved repetitions), so the i-th samples of
    two systems were taken side by side and their ratio is a paired ratio."""

    def __init__(self):
        self.series: dict[tuple[str, str], Series] = {}
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.facts: dict[str, object] = {}

    def add(self, figure: str, system: str, value: float) -> None:
        self.series.setdefault((figure, system), Series()).add(value)

    def get(self, figure: str, system: str) -> Series | None:
        return self.series.get((figure, system))

    def ratio(self, figure: str, system: str, reference: str = "supervisord"):
        """(median ratio, min, max) of the paired ratios system / reference."""
        mine, ref = self.get(figure, system), self.get(figure, reference)
        if not mine or not ref or not mine.values or not ref.values:
            return None
        pairs = [a / b for a, b in zip(mine.values, ref.values) if b > 0]  # noqa: B905
        if not pairs:
            return None
        return statistics.median(pairs), min(pairs), max(pairs)

    def fail(self, what: str, error: BaseException | str) -> None:
        self.failures.append(f"{what}: {error}")

    def to_json(self) -> dict:
        return {
            "series": [{"figure": f, "system": s, "values": v.values}
                       for (f, s), v in self.series.items()],
            "failures": self.failures,
            "notes": self.notes,
            "facts": self.facts,
        }
