"""A tiny experiment for testing the framework: squares of 0..n-1 in a resumable sweep."""

from __future__ import annotations

import dataclasses

CALLS: list[int] = []  # items computed, in order (tests read it)


@dataclasses.dataclass(frozen=True)
class Config:
    n: int = 12
    scale: float = 1.0
    label: str = "full"
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    limit: float | None = None
    seed: int = 0
    hardware: str | None = None
    chunk: int = 3
    interrupt_after: int = -1  # raise KeyboardInterrupt once this many items were computed

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n={self.n} must be >= 1")


QUICK = {"n": 4, "label": "quick"}


def run(config: Config, out) -> dict:
    def work(items):
        rows = []
        for i in items:
            if config.interrupt_after >= 0 and len(CALLS) >= config.interrupt_after:
                raise KeyboardInterrupt
            CALLS.append(i)
            rows.append({"i": i, "value": config.scale * i * i})
        return rows

    rows = out.sweep("squares", list(range(config.n)), work, chunk_size=config.chunk)
    out.write_csv("squares.csv", [{"i": r["i"], "value": r["value"]} for r in rows])
    return {"total": sum(r["value"] for r in rows), "n": config.n}
