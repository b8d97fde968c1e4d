"""Tasks: how a model is fed and scored (``Task``), the built-ins, and ``make_task`` for a space's ``task:``."""

from __future__ import annotations

from typing import Any

from autoprune.errors import ConfigError
from autoprune.tasks.base import Direction, Task
from autoprune.tasks.causal_lm import CausalLMTask
from autoprune.tasks.classification import ClassificationTask
from autoprune.tasks.data import Splits
from autoprune.tasks.regression import RegressionTask

__all__ = ["BUILTIN_TASKS", "CausalLMTask", "ClassificationTask", "Direction", "RegressionTask", "Task", "make_task",
           "task_class"]

BUILTIN_TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "regression": RegressionTask,
                                        "causal_lm": CausalLMTask}


def task_class(kind: str) -> type[Task]:
    """The Task class for ``kind``: a built-in name or ``package.module:callable`` (a Task subclass)."""
    if kind in BUILTIN_TASKS:
        return BUILTIN_TASKS[kind]
    if ":" not in kind:
        raise ConfigError(f"task.kind '{kind}': unknown (built-in: {', '.join(BUILTIN_TASKS)}; "
                          "or package.module:ClassName of a Task subclass)")
    from autoprune.plugins import import_callable

    found = import_callable(kind, "task")
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise ConfigError(f"task.kind '{kind}': not a subclass of autoprune.tasks.Task")
    return found


def make_task(kind: str, splits: Splits, options: dict[str, Any] | None = None) -> Task:
    """Build the space's task on its loaded data (options are the task's keyword arguments)."""
    cls = task_class(kind)
    try:
        return cls(splits, **(options or {}))
    except TypeError as err:
        raise ConfigError(f"task.options for '{kind}': {err}") from None
