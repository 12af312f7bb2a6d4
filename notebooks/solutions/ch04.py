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
               method: str = "CRF · label features", max_loss: float = 0.01) -> float:
    """Layers saved on test with the threshold chosen on train for at most ``max_loss`` consistency lost instead
    of accuracy."""
    tuned = ai.tune_threshold(policies[task][method], ai.feature_table(train_traces[task]), metric="consistency",
                              max_loss=max_loss)
    return ai.simulate(tuned, ai.feature_table(test_traces[task]))["layers_saved"]


def exercise_3(evaluations, task: str = "sentiment", method: str = "CRF · label features") -> int:
    """The example whose real exit comes earliest relative to the layer where its answer settles.

    Why it matters: an exit before the oracle layer stops while the answer is still going to change; whether its
    answer there is right is luck. When even the earliest exit comes after the oracle layer, the policy is
    cautious, and the layers it leaves are the gap to the oracle."""
    evaluation = evaluations[task]
    margin = np.asarray(evaluation.exits[method]) - np.asarray(evaluation.exits["oracle"])
    return int(np.argmin(margin))


#: Written answers to the exercises' "why" questions (the functions above compute the numbers).
WHY = {
    1: "Every check runs the classifier (and for full-vocabulary features the LM head over the whole vocabulary) "
       "at a layer the model may not stop at. When checks per example × check_cost approaches the layers saved, "
       "the measured speedup vanishes although layers are skipped: compare the two and the ideal speedup with the "
       "measured one.",
    2: "Choosing by consistency asks the exit to keep the full model's answers, not only its accuracy: a threshold "
       "chosen for ≤ 1 point of accuracy can change answers whose errors cancel. At 1 point of consistency (full "
       "mode) the criterion is the stricter one: on the default model its threshold was 0.97 (19.7% of the layers "
       "saved, 99% consistency on n=100 test prompts) against the accuracy criterion's 0.93 (22.8%, 96%). Quick "
       "mode allows 5 points, because 1 point of 40 train prompts is less than one prompt; there the consistency "
       "criterion can be the looser one. A replay on the test trace equals the real exit (section 1).",
    3: "An exit before the oracle layer stops while the answer is still going to change; if its answer there is "
       "the full model's, that was luck. If even the earliest exit relative to its oracle layer comes after it, the "
       "policy never stops too early on this split: it is cautious, and the layers it leaves are the gap to the "
       "oracle.",
}
