"""Exits with a statistical guarantee, one job per module: ``p_values`` (the tests' statistics and procedures),
``exit_replay`` (an exit rule replayed at every candidate threshold: the losses), ``ltt`` (Learn-then-Test
certification of a threshold on a held-out calibration split) and ``guarantee`` (the guarantee checked over many
calibration draws). ``ai.risk_control`` is this package."""

from .exit_replay import DEFAULT_CANDIDATES, RISKS, ExitReplay, default_candidates, replay_decisions, replay_exits
from .guarantee import guarantee_check, price_of_guarantee, violation_summary
from .ltt import (
    NEVER_EXIT,
    PROCEDURES,
    Certification,
    certified_copy,
    certify_threshold,
    learn_then_test,
    never_exit_threshold,
)
from .p_values import (
    P_VALUE_METHODS,
    binomial_p_value,
    bonferroni_test,
    check_level,
    fixed_sequence_test,
    hoeffding_bentkus_p_value,
    max_certifiable_risk,
    min_calibration_size,
    p_values,
)

__all__ = ["Certification", "ExitReplay", "replay_exits", "replay_decisions", "default_candidates", "learn_then_test",
           "certify_threshold", "certified_copy", "never_exit_threshold", "guarantee_check", "violation_summary",
           "price_of_guarantee", "binomial_p_value", "hoeffding_bentkus_p_value", "p_values", "fixed_sequence_test",
           "bonferroni_test", "max_certifiable_risk", "min_calibration_size", "check_level", "DEFAULT_CANDIDATES",
           "RISKS", "P_VALUE_METHODS", "PROCEDURES", "NEVER_EXIT"]
