"""torch's intra-op thread count for a run, set in one place.

Float sums (and so ledgers) depend on it. A run with `threads: null` gets the process's own default, whatever an
earlier run in the same process set (a notebook calling `fedsim.run` twice, an in-process sweep, the tests): the
default is read once, before fedsim first changes it.
"""

from __future__ import annotations

_DEFAULT: int | None = None


def use_threads(threads: int | None) -> None:
    """Set torch's threads to `threads`, or to the process's default when None."""
    import torch

    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    wanted = threads or _DEFAULT
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
