"""Keep the frameworks' log noise (Flower, Ray, PEFT, transformers) away from the user; errors still show."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_frameworks() -> None:
    """Keep Flower's, Ray's and HF's log noise away from the user; errors still show."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("flwr", "ray", "peft", "transformers"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # Flower resets its logger's level when a simulation starts; a filter survives that.
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())


def silence_frameworks() -> None:
    """Not even errors: for the way down after Ctrl-C, when Flower and Ray report every lost actor with a traceback."""
    for name in ("flwr", "ray", "peft", "transformers"):
        logging.getLogger(name).disabled = True


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR
