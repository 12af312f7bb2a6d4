"""Figures and widgets: static seaborn figures per chapter (``plots``, ``plots_features``, ``plots_risk``),
the explorer's pure render functions (``explorer_views``) and its ipywidgets wiring (``widgets``)."""

from . import plots, plots_features, plots_risk
from .widgets import ExitExplorer, load_saved_policies

__all__ = ["plots", "plots_features", "plots_risk", "ExitExplorer", "load_saved_policies"]
