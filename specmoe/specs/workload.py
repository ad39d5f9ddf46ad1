"""WorkloadSpec: the traffic a deployment serves and the latency it promises."""
from __future__ import annotations

from dataclasses import dataclass

from specmoe.specs._fields import check


@dataclass(frozen=True)
class WorkloadSpec:
    """A request trace plus serving limits and SLOs.

    `requests` is a request-trace path, or the name of an embedded trace
    (`azure-conv`, `azure-code`), or `poisson` / `gamma` for synthetic arrivals at
    `rate_rps` with lengths drawn around `mean_input_tokens` / `mean_output_tokens`.
    """

    name: str
    requests: str
    duration_s: float = 600.0
    max_batch_size: int = 256
    slo_ttft_ms: float = 2000.0
    slo_tpot_ms: float = 100.0
    slo_percentile: float = 90.0
    rate_rps: float = 0.0
    mean_input_tokens: int = 1024
    mean_output_tokens: int = 256
    note: str = ""

    def __post_init__(self):
        check(self.duration_s > 0, "duration_s", "must be positive")
        check(self.max_batch_size > 0, "max_batch_size", "must be positive")
        check(self.slo_ttft_ms > 0, "slo_ttft_ms", "must be positive")
        check(self.slo_tpot_ms > 0, "slo_tpot_ms", "must be positive")
        check(0 < self.slo_percentile <= 100, "slo_percentile", "must be in (0, 100]")
        check(self.rate_rps >= 0, "rate_rps", "must be >= 0")
        if self.requests in ("poisson", "gamma"):
            check(self.rate_rps > 0, "rate_rps", "synthetic arrivals need a positive rate_rps")
