"""Exit rules for generation: what the generation loop asks at every checked layer of every new token.

Generation has no label words, so a rule here works on full-vocabulary features of the logit lens at the new
token's position (``GENERATION_FEATURES``: the paper's ``top_prob`` and ``gap``, plus ``entropy``,
``cos_prev``, ``layer`` and ``layer_frac``). A rule is any ``rules.ExitRule`` on these features — a
fitted ``ExitPolicy`` too; ``TopProbRule`` is the one that needs no fitting (a ``FeatureThresholdRule`` on
``top_prob`` or ``gap``): its stop probability is the feature itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common.checks import check_int
from ..features.online import GENERATION_FEATURES
from ..rules.interface import ExitRule
from ..rules.plain import FeatureThresholdRule


@dataclass
class TopProbRule(FeatureThresholdRule):
    """Exit at the first layer ``>= min_layer`` whose full-vocabulary ``feature`` (``"top_prob"``, the
    paper's top-1 probability, or ``"gap"``, top-1 minus top-2) reaches ``threshold``.

    ``threshold`` in [0, 1.01] (above 1: never exit early; 0: always exit at ``min_layer`` — a fixed exit,
    LayerSkip's draft); ``min_layer`` an integer >= 1. ``ValueError`` otherwise."""

    threshold: float = 0.9
    min_layer: int = 1
    feature: str = "top_prob"

    FEATURES = ("top_prob", "gap")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold = float(self.threshold)
        self.min_layer = check_int(self.min_layer, "min_layer", low=1)

    def __str__(self) -> str:
        return f"{self.feature} >= {self.threshold:g} from layer {self.min_layer}"


def check_rule(rule, n_layers: int) -> tuple[float, int]:
    """``(threshold, min_layer)`` of an exit rule for generation; ``TypeError`` for an object that is not a
    rule, ``ValueError`` for a rule that needs label-word features (generation has none) or whose
    ``min_layer`` is not in 1..L."""
    if not isinstance(rule, ExitRule):
        raise TypeError(f"{type(rule).__name__} is not an exit rule (rules.ExitRule). For a plain threshold on "
                        "the top-1 probability use ai.TopProbRule(threshold, min_layer).")
    features = getattr(rule, "resolved_features", None)
    if features is not None:
        other = [f for f in features if f not in GENERATION_FEATURES]
        if other:
            raise ValueError(f"the rule uses {other}, which generation cannot compute: there are no label words when "
                             f"generating text. Use full-vocabulary features: {GENERATION_FEATURES}.")
    threshold = float(rule.threshold)
    min_layer = check_int(int(rule.min_layer), "the rule's min_layer", low=1, high=n_layers,
                          allowed=f"an integer in 1..{n_layers} (the model's layers; the embeddings cannot exit)")
    return threshold, min_layer
