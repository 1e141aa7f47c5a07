"""fedsim: federated and over-the-air fine-tuning simulator.

The Python API (imported lazily, so that `import fedsim` and `fedsim --help` stay fast):

- `fedsim.run(scenario, overrides, out)` -> `RunResult` (summary, ledgers as DataFrames)
- `fedsim.sweep(sweep_file, out, workers=...)` -> `SweepResult`
- `fedsim.load_run(path)` -> `RunResult` of a finished run directory
- `fedsim.register_policy(ConfigClass)` decorator: a rank policy from your own code
- `fedsim.register_algorithm(ConfigClass)` decorator: a federated algorithm from your own code
- `fedsim.register_channel(ConfigClass)` decorator: an uplink model from your own code
- `fedsim.register_task(ConfigClass)` decorator: a task (data schema, encoding, loss, metric) from your own code
- `fedsim.register_aggregator(name, merge)`: how the clients' factors of a layer are merged
- `fedsim.register_adapter(name, build, train)`: an adapter kind (what clients hold and how they train)
- `fedsim.register_backbone(model_type, family)`: pooling and LoRA targets for a backbone family
"""

from fedsim.types import FedsimError

__version__ = "0.1.0"
__all__ = [
    "FedsimError",
    "load_run",
    "register_adapter",
    "register_aggregator",
    "register_algorithm",
    "register_backbone",
    "register_channel",
    "register_policy",
    "register_task",
    "run",
    "sweep",
]


def __getattr__(name: str):
    from importlib import import_module

    if name in ("run", "sweep", "load_run", "RunResult", "SweepResult"):
        return getattr(import_module("fedsim.api"), name)
    if name in ("register_policy", "register_algorithm", "register_adapter", "register_aggregator", "register_backbone", "register_channel", "register_task"):
        return getattr(import_module("fedsim.plugins"), name)
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
