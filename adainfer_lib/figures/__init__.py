"""Figures and widgets: static seaborn figures per chapter (``plots``, ``plots_features``, ``plots_evaluation``,
``plots_risk``),
the explorer's state without widgets (``explorer_state``), its pure render functions (``explorer_views``)
and its ipywidgets wiring (``widgets``)."""

from . import plots, plots_evaluation, plots_features, plots_risk
from .explorer_state import ExplorerState, load_saved_policies
from .plots_evaluation import plot_exit_layers, plot_pareto, plot_speedup
from .widgets import ExitExplorer

__all__ = ["plots", "plots_features", "plots_risk", "plots_evaluation", "plot_pareto", "plot_exit_layers",
           "plot_speedup", "ExitExplorer", "ExplorerState", "load_saved_policies"]
