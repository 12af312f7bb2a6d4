"""adainfer_lib: the helper library behind the AdaInfer notebook suite (logit lens, exit classifiers,
real early exit). Each notebook imports only this package."""

from .lens import LayerTrace, trace
from .models import DEFAULT_MODEL, OFFLINE_MODELS, LensModel, ModelNotFoundError, load_model
from .registry import UnsupportedArchitectureError, supported_model_types

__version__ = "0.1.0"
from .calibration import CALIBRATION_METHODS, Calibration
from .notebook import NotebookSettings, setup_notebook
from .task_trace import TaskTrace, calibration_report, trace_task
from . import plots
from .tasks import Task, available_tasks, load_task
