"""Tasks and their data: the offline sources (``sources``, ``prepare``), in-context tasks (``tasks``),
label-word calibration (``calibration``) and the traced, calibrated task (``task_trace``)."""

from .calibration import CALIBRATION_METHODS, Calibration
from .task_trace import TaskTrace, calibration_report, trace_task
from .tasks import Task, available_tasks, load_task

__all__ = ["Task", "available_tasks", "load_task", "CALIBRATION_METHODS", "Calibration", "TaskTrace",
           "trace_task", "calibration_report"]
