"""Solutions to chapter 04's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

import numpy as np

import adainfer_lib as ai


def exercise_1(evaluations, task: str = "sentiment", method: str = "CRF · paper features") -> float:
    """Checks per example that would cost as much as the layers ``method`` saves (time of one check measured
    in layers: ``check_cost``)."""
    evaluation = evaluations[task]
    layers_saved = evaluation.n_layers - evaluation.exits[method].mean()
    check_cost = evaluation.table.set_index("method").loc[method, "check_cost"]
    return float(layers_saved / check_cost)


def exercise_2(policies, train_traces, test_traces, task: str = "sentiment",
               method: str = "CRF · label features") -> float:
    """Layers saved on test with the threshold chosen on train for ≥ 99% consistency instead of accuracy."""
    tuned = ai.tune_threshold(policies[task][method], ai.feature_table(train_traces[task]), metric="consistency")
    return ai.simulate(tuned, ai.feature_table(test_traces[task]))["layers_saved"]


def exercise_3(evaluations, task: str = "sentiment", method: str = "CRF · label features") -> int:
    """The example whose real exit comes earliest relative to the layer where its answer settles.

    Why it matters: an exit before the oracle layer stops while the answer is still going to change; whether its
    answer there is right is luck. When even the earliest exit comes after the oracle layer, the policy is
    cautious, and the layers it leaves are the gap to the oracle."""
    evaluation = evaluations[task]
    margin = np.asarray(evaluation.exits[method]) - np.asarray(evaluation.exits["oracle"])
    return int(np.argmin(margin))


def failure_example(evaluations, task: str = "sentiment", method: str = "CRF · label features") -> int | None:
    """An example the full model gets right and ``method``'s early exit gets wrong (None if there is none)."""
    evaluation = evaluations[task]
    pairs = zip(evaluation.predictions[method], evaluation.predictions["full"], evaluation.gold)
    return next((i for i, (early, full, gold) in enumerate(pairs) if early != gold and full == gold), None)
