"""Exit rules and where they run: the online features (``features``), the exit-rule interface and the rules
without a classifier (``rules``), the learned policy (``policy`` over ``scorers`` / ``crf``) with its replays
and threshold tuning (``tuning``) and files (``persistence``), which model a rule belongs to (``identity``),
the real early-exit runner (``runner``) and exits with a statistical guarantee (``risk_control``). The replay
arithmetic itself is ``common.replay``."""

from ..common.replay import Decisions, first_exit, metrics_at, oracle_exits, settled_mask
from .features import (
                       ONLINE_FEATURES,
                       feature_auc,
                       feature_correlations,
                       feature_table,
                       label_features,
                       lens_check_cost,
                       per_layer_auc,
                       permutation_importance_table,
                       split_by_example,
)
from .identity import ModelIdentity, ModelMismatchError, PolicyModelMismatchError
from .policy import ExitPolicy
from .risk_control import (
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
from .rules import ExitRule, FeatureThresholdRule, FixedExitPolicy, GapThresholdPolicy, OnlineState, ScheduledExitPolicy
from .runner import ExitResult, FullResult, count_layer_rows, run_early_exit, run_full
from .tuning import (
                       choose_threshold,
                       compare_policies,
                       oracle_exit_layers,
                       simulate,
                       simulate_exits,
                       threshold_sweep,
                       tune_threshold,
)

__all__ = ["ONLINE_FEATURES", "label_features", "feature_table", "feature_auc", "per_layer_auc",
           "feature_correlations", "permutation_importance_table", "split_by_example", "lens_check_cost",
           "ExitRule", "OnlineState", "ExitPolicy", "FixedExitPolicy", "ScheduledExitPolicy", "GapThresholdPolicy",
           "FeatureThresholdRule",
           "ModelIdentity", "ModelMismatchError", "PolicyModelMismatchError",
           "Decisions", "first_exit", "settled_mask", "oracle_exits", "metrics_at",
           "simulate", "simulate_exits", "oracle_exit_layers", "threshold_sweep", "choose_threshold",
           "tune_threshold", "compare_policies", "ExitResult", "FullResult", "run_early_exit", "run_full",
           "count_layer_rows", "Certification", "ExitReplay", "replay_exits", "learn_then_test", "certify_threshold",
           "guarantee_check", "violation_summary", "price_of_guarantee", "max_certifiable_risk",
           "min_calibration_size"]
