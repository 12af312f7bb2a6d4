"""Exit rules and where they run: the online features (``features``), the learned exit policy (``policy``),
the real early-exit runner (``runner``) and exits with a statistical guarantee (``risk_control``)."""

from .features import (ONLINE_FEATURES, feature_auc, feature_correlations, feature_table, label_features,
                       lens_check_cost, per_layer_auc, permutation_importance_table, split_by_example)
from .policy import (ExitPolicy, PolicyModelMismatchError, choose_threshold, compare_policies, oracle_exit_layers,
                     simulate, simulate_exits, threshold_sweep, tune_threshold)
from .risk_control import (Certification, ExitReplay, certify_threshold, guarantee_check, learn_then_test,
                           max_certifiable_risk, min_calibration_size, price_of_guarantee, replay_exits,
                           violation_summary)
from .runner import (ExitResult, FixedExitPolicy, FullResult, ScheduledExitPolicy, count_layer_rows, run_early_exit,
                     run_full)

__all__ = ["ONLINE_FEATURES", "label_features", "feature_table", "feature_auc", "per_layer_auc",
           "feature_correlations", "permutation_importance_table", "split_by_example", "lens_check_cost",
           "ExitPolicy", "PolicyModelMismatchError", "simulate", "simulate_exits", "oracle_exit_layers",
           "threshold_sweep", "choose_threshold", "tune_threshold", "compare_policies",
           "FixedExitPolicy", "ScheduledExitPolicy", "ExitResult", "FullResult", "run_early_exit", "run_full",
           "count_layer_rows", "Certification", "ExitReplay", "replay_exits", "learn_then_test", "certify_threshold",
           "guarantee_check", "violation_summary", "price_of_guarantee", "max_certifiable_risk",
           "min_calibration_size"]
