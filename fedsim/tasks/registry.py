"""Task registry: a new task is one file plus one line here (config class, task class).

Both stay light (pydantic; torch only inside the task's methods), so reading a scenario imports no torch.
Yours, from your own code: `fedsim.register_task(ConfigClass)` on the task class.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Discriminator, Tag

from fedsim.tasks.base import Task
from fedsim.tasks.causal_lm import CausalLM, CausalLMConfig
from fedsim.tasks.classification import Classification, ClassificationConfig
from fedsim.types import add_named, load_entry_point_pairs

DEFAULT_TASK = "classification"

TASKS: dict[str, tuple[type, type[Task]]] = {
    "classification": (ClassificationConfig, Classification),
    "causal-lm": (CausalLMConfig, CausalLM),
}


def _name_of(data) -> str:
    name = data.get("name", DEFAULT_TASK) if isinstance(data, dict) else getattr(data, "name", DEFAULT_TASK)
    return name if name in TASKS else DEFAULT_TASK  # an unknown name fails on the default config's `name` literal


def config_union():
    """The pydantic type of a scenario's `task:` section: the registered configs, told apart by `name`
    (default `classification`, so scenarios need not write it)."""
    configs = [Annotated[cfg, Tag(name)] for name, (cfg, _) in TASKS.items()]
    return ClassificationConfig if len(configs) == 1 else Annotated[Union[tuple(configs)], Discriminator(_name_of)]  # type: ignore[valid-type]  # noqa: UP007


TaskConfig = config_union()


def add_task(config_cls: type, task_cls: type[Task]) -> str:
    """Register a task (the registry's part of `fedsim.register_task`); returns its name."""
    return add_named(TASKS, config_cls, task_cls, "task", base=Task)


ENTRY_POINT_GROUP = "fedsim.tasks"  # a distribution's entry point here names a (config class, task class) pair


def load_entry_points() -> list[str]:
    """Register the tasks that installed distributions declare under ENTRY_POINT_GROUP (a broken one is skipped
    with one line on stderr); returns their names."""
    return load_entry_point_pairs(ENTRY_POINT_GROUP, add_task, "task")


def build_task(config) -> Task:
    return TASKS[config.name][1](config)
