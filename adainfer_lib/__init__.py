"""adainfer_lib: the helper library behind the AdaInfer notebook suite. Each notebook imports only this package.

The sub-packages follow the data flow, and this namespace re-exports their public API in the same order:
``model`` (load a model, its logit lens, traces) → ``data`` (tasks, calibration, traced tasks) → ``features``
(per-layer features, the feature table) → ``readers`` (learned readers of the residual states: probe, tuned
lens, beside the logit lens) → ``rules`` (exit rules, their fitting and threshold choice) →
``runner`` (real early exit) → ``certification`` (guaranteed exits) → ``generation`` (exits while generating)
→ ``evaluation`` (baselines, evaluation, seeds) → ``figures`` (plots, explorer) → ``course`` (set-up cell,
exercise checkers). ``common`` holds the shared paths, cache, argument checks and the replay kernel."""

__version__ = "0.2.0"

from . import certification as risk_control
from .certification import (
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
from .common import paths
from .common.checks import NonFiniteError
from .common.replay import Decisions, metrics_at
from .course import NotebookSettings, exercises, prose, setup_notebook
from .data import (
                    CALIBRATION_METHODS,
                    Calibration,
                    Task,
                    TaskTrace,
                    available_tasks,
                    calibration_report,
                    load_task,
                    trace_task,
)
from .evaluation import (
                    ADAINFER_POLICIES,
                    Evaluation,
                    PrunedModel,
                    baselines,
                    best_within,
                    block_influence,
                    dropped_layers,
                    evaluate,
                    fit_policies,
                    pareto_curves,
                    run_evaluation,
                    seeds,
                    shortgpt_curve,
                    suggest_min_layer,
                    time_interleaved,
)
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
from .figures import (
                    ExitExplorer,
                    load_saved_policies,
                    plot_exit_layers,
                    plot_pareto,
                    plot_speedup,
                    plots,
                    plots_features,
                    plots_risk,
)
from .generation import (
                    CACHE_STRATEGIES,
                    GenerationConfig,
                    GenerationResult,
                    TopProbRule,
                    UnsupportedStrategyError,
                    generate_batch,
                    generate_early_exit,
                    greedy_generate,
                    plots_generation,
                    run_generation_study,
                    sequence_nll,
                    speculative_generate,
                    summarize_study,
                    token_settling,
)
from .model import (
                    DEFAULT_MODEL,
                    OFFLINE_MODELS,
                    LayerTrace,
                    LensModel,
                    ModelNotFoundError,
                    RegistryPathError,
                    UnsupportedArchitectureError,
                    load_model,
                    supported_model_types,
                    trace,
)
from .model.identity import ModelMismatchError, PolicyModelMismatchError
from .readers import (
                    LogitLensReader,
                    ProbeReader,
                    Reader,
                    ReaderModelMismatchError,
                    ReaderTrace,
                    ResidualStates,
                    TunedLensReader,
                    choose_translator,
                    out_of_fold_trace,
                    residual_states,
                    task_states,
)
from .rules import (
                    ExitPolicy,
                    ExitRule,
                    FeatureThresholdRule,
                    FixedExitPolicy,
                    GapThresholdPolicy,
                    OnlineState,
                    PatienceRule,
                    ScheduledExitPolicy,
                    choose_threshold,
                    compare_policies,
                    oracle_exit_layers,
                    simulate,
                    simulate_exits,
                    threshold_sweep,
                    tune_threshold,
)
from .runner import ExitResult, FullResult, count_layer_rows, run_early_exit, run_full
from .runner import early_exit as early_exit

__all__ = [
    # model and lens
    "DEFAULT_MODEL", "OFFLINE_MODELS", "LensModel", "ModelNotFoundError", "load_model", "RegistryPathError",
    "UnsupportedArchitectureError", "supported_model_types", "LayerTrace", "trace", "NonFiniteError",
    # tasks and data
    "Task", "available_tasks", "load_task", "CALIBRATION_METHODS", "Calibration", "TaskTrace", "trace_task",
    "calibration_report",
    # exits
    "ONLINE_FEATURES", "label_features", "feature_table", "feature_auc", "per_layer_auc", "feature_correlations",
    "permutation_importance_table", "split_by_example", "lens_check_cost",
    # readers
    "Reader", "LogitLensReader", "ProbeReader", "TunedLensReader", "choose_translator", "ReaderTrace",
    "ReaderModelMismatchError", "ResidualStates", "residual_states", "task_states", "out_of_fold_trace",
    # rules, runs, certification
    "ExitRule", "FeatureThresholdRule",
        "OnlineState", "ExitPolicy", "GapThresholdPolicy", "ModelMismatchError",
    "PolicyModelMismatchError", "Decisions", "metrics_at", "simulate",
    "simulate_exits", "oracle_exit_layers", "threshold_sweep", "choose_threshold", "tune_threshold",
    "compare_policies", "FixedExitPolicy", "ScheduledExitPolicy", "PatienceRule", "ExitResult", "FullResult",
    "run_early_exit",
    "run_full", "count_layer_rows", "Certification", "ExitReplay", "replay_exits", "learn_then_test",
    "certify_threshold", "guarantee_check", "violation_summary", "price_of_guarantee", "max_certifiable_risk",
    "min_calibration_size",
    # evaluation
    "PrunedModel", "block_influence", "dropped_layers", "ADAINFER_POLICIES", "Evaluation", "fit_policies",
    "run_evaluation", "evaluate", "time_interleaved", "pareto_curves", "shortgpt_curve",
    "best_within", "suggest_min_layer", "plot_pareto", "plot_exit_layers", "plot_speedup",
    # generation
    "CACHE_STRATEGIES", "TopProbRule", "GenerationResult", "UnsupportedStrategyError", "greedy_generate",
    "generate_early_exit", "speculative_generate", "sequence_nll", "GenerationConfig", "run_generation_study",
    "summarize_study", "token_settling", "plots_generation", "generate_batch",
    # figures, widgets, course
    "ExitExplorer", "load_saved_policies", "NotebookSettings", "setup_notebook",
    # modules used as namespaces in the notebooks
    "early_exit", "risk_control", "baselines", "seeds", "plots", "plots_features", "plots_risk", "exercises",
    "prose",
    "paths",
]
