"""Evaluation against baselines: fixed, random and ShortGPT baselines (``baselines``), the real early-exit
evaluation (``evaluate``), fitting the paper's policies (``fitting``), exit rules on learned readers and the
probe's C (``reader_rules``), Pareto curves (``pareto``), and results over demonstration seeds (``seeds``)."""

from .baselines import PrunedModel, block_influence, dropped_layers
from .evaluate import Evaluation, evaluate, run_evaluation, time_interleaved
from .fitting import ADAINFER_POLICIES, fit_policies, suggest_min_layer
from .pareto import best_within, pareto_curves, shortgpt_curve
from .reader_rules import CERTIFICATION_CANDIDATES, READER_RULES, certify_reader_rule, choose_probe_c, fit_reader_rule
from .seeds import layer_statistics, layer_statistics_over_seeds, mean_sd, policies_over_seeds

__all__ = ["PrunedModel", "block_influence", "dropped_layers", "ADAINFER_POLICIES", "Evaluation",
           "fit_policies", "run_evaluation", "evaluate", "time_interleaved", "pareto_curves",
           "shortgpt_curve", "best_within", "suggest_min_layer", "READER_RULES", "choose_probe_c", "fit_reader_rule",
           "certify_reader_rule", "CERTIFICATION_CANDIDATES",
           "layer_statistics", "layer_statistics_over_seeds", "policies_over_seeds", "mean_sd"]
