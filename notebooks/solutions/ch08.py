"""Solutions to chapter 08's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import numpy as np


def exercise_1(train, test, train_states, test_states, layer: int) -> float:
    """Section 1's probe at ``layer``: standardise, a C = 0.05 logistic regression on the full model's train
    decisions, then its agreement with the full model on the test prompts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_states.states[:, layer])
    probe = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(train_states.states[:, layer]),
                                                          train.final_predictions())
    predicted = probe.predict(scaler.transform(test_states.states[:, layer]))
    return float(np.mean(predicted == test.final_predictions()))


def exercise_2(rule, table, calibration_examples, delta: float = 0.10) -> float | None:
    """The rule moved to the new data's batch calibration, certified on the first half of its prompts."""
    from adainfer_lib.evaluation.reader_rules import certify_reader_rule

    moved = rule.for_task(table)
    calibration = table[table.example.isin(calibration_examples)]
    return certify_reader_rule(moved, calibration, delta=delta, epsilon=0.05)[1].threshold
