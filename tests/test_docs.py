"""The documentation names files that exist: a renamed test or script must not leave the README pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/architecture.md", "benchmarks/README.md")
# A repository path: one of the fixed top-level folders, then path characters (a trailing dot ends the sentence).
PATH = re.compile(r"(?<![\w./-])((?:fedsim|channels|policies|scenarios|tests|benchmarks|docs)/[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def exists(name: str) -> bool:
    path = ROOT / name
    if path.exists():
        return True
    stem, _, attr = name.rpartition(".")
    if stem and (ROOT / f"{stem}.py").is_file():  # a module's attribute, e.g. fedsim/cohort.length_chunks
        return True
    return name.rsplit("/", 1)[-1].isupper()  # a placeholder the text defines, e.g. policies/checkpoints/P


@pytest.mark.parametrize("doc", DOCS)
def test_every_repository_path_a_document_names_exists(doc):
    missing = sorted(name for name in named_paths((ROOT / doc).read_text()) if not exists(name))
    assert missing == [], f"{doc} names paths that do not exist: {missing}"


def test_the_path_pattern_finds_what_it_must_and_skips_placeholders():
    text = "see `tests/test_ray_cluster.py`, benchmarks/policy_table.py. And fedsim/cohort.length_chunks or policies/checkpoints/P"
    assert named_paths(text) == {"tests/test_ray_cluster.py", "benchmarks/policy_table.py", "fedsim/cohort.length_chunks", "policies/checkpoints/P"}
    assert not exists("tests/test_sweep_ray.py") and exists("fedsim/cohort.length_chunks") and exists("policies/checkpoints/P")
