"""Golden ledgers: the shipped quickstart gives these rounds.csv and clients.csv, byte for byte.

They pin every modelled number (channel, metering, aggregation, training, evaluation), so a refactor
that is meant to keep behaviour cannot change a result unnoticed. A change of a model on purpose
regenerates them, and the commit says why:

    FEDSIM_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

The quickstart is shortened to 2 rounds and a 64-example evaluation (and, for tiny-random, 6 clients
with 2 local steps) so that the tests take seconds; `wire_bytes_*` columns are left out, since they
count the scenario YAML each Flower message carries and so move whenever the schema gains a field.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest

from fedsim.config import load_scenario
from fedsim.runner import run_scenario

GOLDEN = Path(__file__).parent / "golden"
# threads=2: a ledger's last digits depend on torch's thread count (the order of its reductions), so the goldens,
# recorded on 2 cores, pin it; they then hold on any machine and under OMP_NUM_THREADS.
SHORT = ["rounds=2", "data.eval_samples=64", "threads=2"]
TINY = [*SHORT, "model.backbone=tiny-random", "clients.num_clients=6", "clients.per_round=3", "train.local_steps=2"]
IGNORED = ("wire_bytes_up", "wire_bytes_down")


def ledger_text(path: Path) -> str:
    """The ledger without the columns that depend on the scenario schema's size."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    keep = [i for i, name in enumerate(rows[0]) if name not in IGNORED]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep] for row in rows])
    return out.getvalue()


def check(name: str, overrides: list[str], tmp_path: Path) -> None:
    scenario = load_scenario("scenarios/quickstart.yaml", overrides)
    run_scenario(scenario, tmp_path / "run", progress=False)
    for ledger in ("rounds.csv", "clients.csv"):
        text = ledger_text(tmp_path / "run" / ledger)
        golden = GOLDEN / f"{name}.{ledger}"
        if os.environ.get("FEDSIM_REGENERATE_GOLDEN"):
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{ledger} differs from {golden}"


def test_tiny_quickstart_ledgers_are_golden(tmp_path):
    # The inline engine only: tests/test_ray_cluster.py checks that Flower's engine gives the inline ledger.
    check("quickstart-tiny", [*TINY, "engine=inline"], tmp_path)


@pytest.mark.minilm
def test_minilm_quickstart_ledgers_are_golden(tmp_path):
    check("quickstart-minilm", [*SHORT, "engine=inline"], tmp_path)
