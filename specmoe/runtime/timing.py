"""Phase timer: CUDA events on GPU (one event per phase boundary), perf_counter on CPU.

Usage: `t.phase(layer, "attention")` closes the open phase and opens the next; `t.stop()`
closes the last; `t.rows()` synchronises and returns [(layer, phase, us), ...]. Phases:
attention, gate, dispatch, experts, shared, combine, ffn (dense layers), head.
"""
from __future__ import annotations

import time

import torch


class PhaseTimer:
    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list[tuple[int, str, object]] = []
        self._end = None

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def phase(self, layer: int, name: str) -> None:
        self._marks.append((layer, name, self._now()))

    def stop(self) -> None:
        self._end = self._now()

    def rows(self) -> list[tuple[int, str, float]]:
        """(layer, phase, microseconds) in order; needs stop() first."""
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        ends = [m[2] for m in self._marks[1:]] + [self._end]
        for (layer, name, a), b in zip(self._marks, ends):
            us = a.elapsed_time(b) * 1e3 if self.cuda else (b - a) * 1e6
            out.append((layer, name, us))
        return out

    def total_us(self) -> float:
        return sum(r[2] for r in self.rows())


class NullTimer:
    def phase(self, layer: int, name: str) -> None:
        pass

    def stop(self) -> None:
        pass
