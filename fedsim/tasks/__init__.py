"""Tasks: what is learned (data schema, encoding, loss, metric), one file each, registered by name."""

from fedsim.tasks.base import Task
from fedsim.tasks.registry import TASKS, TaskConfig, build_task

__all__ = ["TASKS", "Task", "TaskConfig", "build_task"]
