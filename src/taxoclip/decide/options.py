"""A decision policy from the options front ends share (CLI flags, HTTP form fields)."""
from __future__ import annotations

from typing import Sequence

from .rule import Policy, Thresholds

__all__ = ["policy_from_options"]


def policy_from_options(threshold: str | None = None, taxon_thresholds: str | None = None,
                        prior: Sequence[str] | None = None, prior_mode: str = "mask",
                        prior_weight: float = 0.1) -> Policy:
    ranges = None
    if prior:
        from ..geo import RangePrior

        ranges = RangePrior.load(list(prior))
    return Policy(Thresholds.parse(threshold, taxon_thresholds), ranges, prior_mode, prior_weight)
