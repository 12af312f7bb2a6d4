"""Exits with a statistical guarantee: Learn-then-Test certification of an exit rule's threshold on a held-out
calibration split, and the guarantee checked over many calibration draws (``ltt``)."""

from .ltt import (
    Certification,
    ExitReplay,
    certify_threshold,
    guarantee_check,
    learn_then_test,
    max_certifiable_risk,
    min_calibration_size,
    price_of_guarantee,
    replay_exits,
    violation_summary,
)

__all__ = ["Certification", "ExitReplay", "replay_exits", "learn_then_test", "certify_threshold", "guarantee_check",
           "violation_summary", "price_of_guarantee", "max_certifiable_risk", "min_calibration_size"]
