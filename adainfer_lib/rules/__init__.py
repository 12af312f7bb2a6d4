"""Exit rules: the interface every consumer reads (``interface``), the rules without a classifier (``plain``),
the learned policy (``policy`` over ``scorers`` / ``crf``), choosing its threshold on the train split
(``tuning``) and saving it without pickle (``persistence``)."""

from .interface import ExitRule, OnlineState
from .plain import FeatureThresholdRule, FixedExitPolicy, GapThresholdPolicy, PatienceRule, ScheduledExitPolicy
from .policy import ExitPolicy
from .tuning import (
    choose_threshold,
    compare_policies,
    oracle_exit_layers,
    simulate,
    simulate_exits,
    threshold_sweep,
    tune_threshold,
)

__all__ = ["ExitRule", "OnlineState", "ExitPolicy", "FixedExitPolicy", "ScheduledExitPolicy", "GapThresholdPolicy",
           "FeatureThresholdRule", "PatienceRule", "simulate", "simulate_exits", "oracle_exit_layers",
           "threshold_sweep", "choose_threshold", "tune_threshold", "compare_policies"]
