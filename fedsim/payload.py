"""The names in a payload, defined once.

A payload is a flat dict of float32 arrays, exactly what goes into a Flower `ArrayRecord`:

    A.{i}        layer i's LoRA factor A, [rank, in]      (only layers with rank > 0)
    B.{i}        layer i's LoRA factor B, [out, rank]
    head.weight  the classification head (classification tasks; not on the air in nano mode)
    head.bias
    F.<key>      a client's diagonal Fisher estimate of <key> (aggregation.method: fisher)
    <prefix>...  what a federated algorithm adds (e.g. SCAFFOLD's control variates: `C.` down, `dC.` up)
    memory.<...> state the simulator carries for a client between rounds; never on the air

Quantised uploads add `<key>/scale` (channels.quantization.SCALE_SUFFIX).
"""

from __future__ import annotations

A_PREFIX, B_PREFIX = "A.", "B."
FACTOR_PREFIXES = (A_PREFIX, B_PREFIX)
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
HEAD_KEYS = (HEAD_WEIGHT, HEAD_BIAS)
FISHER_PREFIX = "F."
MEMORY_PREFIX = "memory."


def a_key(layer: int) -> str:
    return f"{A_PREFIX}{layer}"


def b_key(layer: int) -> str:
    return f"{B_PREFIX}{layer}"
