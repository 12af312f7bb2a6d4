"""Solutions to chapter 03's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations

from sklearn.base import clone

import adainfer_lib as ai


def exercise_1(train, test, policies) -> dict:
    """The paper's SVM at the threshold chosen on train for at most 3 points of accuracy lost, on test."""
    svm = policies["SVM · paper features"]
    threshold, _ = ai.choose_threshold(svm, train, max_loss=0.03, metric="accuracy")
    result = ai.simulate(svm, test, threshold, ci=0.95)
    return {"layers_saved": result["layers_saved"], "accuracy_change_pts": result["accuracy_change_pts"]}


def exercise_2(train, test, policies, min_layers=(10, 20)) -> dict:
    """Layers saved on test by the label-feature CRF refitted with each ``min_layer`` (threshold chosen on
    train for ≥ 99% consistency)."""
    saved = {}
    for min_layer in min_layers:
        crf = clone(policies["CRF · label features"]).set_params(min_layer=min_layer).fit(train)
        threshold, _ = ai.choose_threshold(crf, train, metric="consistency", max_loss=0.01)
        saved[min_layer] = ai.simulate(crf, test, threshold)["layers_saved"]
    return saved


def exercise_3(train):
    """A policy that beats the paper's SVM: logistic regression on the calibrated label-word features, trained
    on the label the stopping rule needs (``settled``)."""
    features = ("label_gap", "label_top_prob", "layer_frac")
    return ai.ExitPolicy("logistic", features=features, label_scheme="settled").fit(train)


#: Written answers to the exercises' "why" questions (the functions above compute the numbers).
WHY = {
    1: "Whether zero lies inside the 95% bootstrap interval says whether this test split can tell the accuracy "
       "change from no change: with n of a few hundred, one point is a handful of answers, and a 'lose at most 3 "
       "points' target chosen on train can land anywhere in an interval several points wide.",
    2: "A larger min_layer forbids every exit before it: it removes early false stops (layers that agree by "
       "chance), which lets the tuned threshold drop and exits after min_layer come sooner — savings can rise; "
       "but it also removes every good early exit, a floor on the exit layer — savings can fall. Which effect wins "
       "depends on where the examples settle (the oracle histogram).",
    3: "A policy beats the paper's SVM here when its stop probability ranks layers by how safe an exit is: the "
       "calibrated label-word features do (chapter 02), the full-vocabulary confidence does not on this model; "
       "training on `settled` matches what the stopping rule needs.",
}
