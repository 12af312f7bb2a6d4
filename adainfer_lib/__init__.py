"""adainfer_lib: the helper library behind the AdaInfer notebook suite (logit lens, exit classifiers,
real early exit). Each notebook imports only this package."""

from .lens import LayerTrace, trace
from .models import DEFAULT_MODEL, OFFLINE_MODELS, LensModel, ModelNotFoundError, load_model
from .registry import RegistryPathError, UnsupportedArchitectureError, supported_model_types

__version__ = "0.1.0"
from .calibration import CALIBRATION_METHODS, Calibration
from .notebook import NotebookSettings, setup_notebook
from .task_trace import TaskTrace, calibration_report, trace_task
from . import exercises, plots, seeds
from .tasks import Task, available_tasks, load_task
from .features import (ONLINE_FEATURES, feature_auc, feature_correlations, feature_table, label_features,
                       lens_check_cost, per_layer_auc, permutation_importance_table, split_by_example)
from .policy import (ExitPolicy, choose_threshold, compare_policies, oracle_exit_layers, simulate, simulate_exits,
                     threshold_sweep, tune_threshold)
from . import plots_features
from .widgets import ExitExplorer, load_saved_policies
from . import baselines, early_exit
from .early_exit import (ExitResult, FixedExitPolicy, FullResult, ScheduledExitPolicy, count_layer_rows, run_early_exit,
                         run_full)
from .baselines import GapThresholdPolicy, block_influence, dropped_layers
from .evaluate import (ADAINFER_POLICIES, Evaluation, best_within, evaluate, fit_policies, pareto_curves, pareto_front,
                       plot_exit_layers, plot_pareto, plot_speedup, run_evaluation, shortgpt_curve, suggest_min_layer,
                       time_interleaved)
from . import plots_risk, risk_control
from .risk_control import (Certification, ExitReplay, certify_threshold, guarantee_check, learn_then_test,
                           max_certifiable_risk, min_calibration_size, price_of_guarantee, replay_exits,
                           violation_summary)
