"""Evaluation against baselines: fixed, random and ShortGPT baselines (``baselines``), the real early-exit
evaluation and its Pareto curves (``evaluate``), and results over demonstration seeds (``seeds``)."""

from .baselines import GapThresholdPolicy, block_influence, dropped_layers
from .evaluate import (ADAINFER_POLICIES, Evaluation, best_within, evaluate, fit_policies, pareto_curves, pareto_front,
                       plot_exit_layers, plot_pareto, plot_speedup, run_evaluation, shortgpt_curve, suggest_min_layer,
                       time_interleaved)
from .seeds import layer_statistics, layer_statistics_over_seeds, mean_sd, policies_over_seeds

__all__ = ["GapThresholdPolicy", "block_influence", "dropped_layers", "ADAINFER_POLICIES", "Evaluation",
           "fit_policies", "run_evaluation", "evaluate", "time_interleaved", "pareto_curves", "pareto_front",
           "shortgpt_curve", "best_within", "suggest_min_layer", "plot_pareto", "plot_exit_layers", "plot_speedup",
           "layer_statistics", "layer_statistics_over_seeds", "policies_over_seeds", "mean_sd"]
