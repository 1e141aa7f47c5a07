"""The code's shape, for issue 19's before/after: modules and lines, the longest functions, import cycles,
and how long `fedsim --help` and `fedsim validate` take (and whether they import torch).

    .venv/bin/python benchmarks/code_shape.py                 # this checkout
    git worktree add /tmp/before <commit> && .venv/bin/python benchmarks/code_shape.py /tmp/before

Import cycles are counted between modules of fedsim, channels and policies, over every import that runs
(module level or inside a function), leaving out `if TYPE_CHECKING:` blocks, as import-linter does; `from
package import submodule` counts as an import of the submodule. Timings are the median of 5 fresh processes.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("fedsim", "channels", "policies")


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in PACKAGES and "__pycache__" not in rel.parts:
            found[".".join(rel.with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(tree: ast.Module, known: dict[str, Path]) -> set[str]:
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    deps: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            deps.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known]
            deps.update(subs)
            if len(subs) < len(node.names):
                deps.add(node.module)
    return {d for d in deps if d in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def command_time(root: Path, args: list[str]) -> tuple[float, bool]:
    """Median seconds of `fedsim <args>` in a fresh process on `root`'s code, and whether it imported torch."""
    probe = f"import sys, runpy; sys.argv = ['fedsim', *{args!r}]\ntry:\n    runpy.run_module('fedsim.cli', run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules, file=sys.stderr)"
    env = {**os.environ, "PYTHONPATH": str(root)}
    times, torch = [], False
    for _ in range(5):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        torch = "TORCH True" in done.stderr
    return statistics.median(times), torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", help="a checkout of fedsim (default: this one)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    known = modules(root)
    lines, functions, graph = {}, [], {}
    for name, path in known.items():
        source = path.read_text()
        tree = ast.parse(source)
        lines[name] = len(source.splitlines())
        functions += [(n.end_lineno - n.lineno + 1, f"{name}.{n.name}") for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        graph[name] = imports(tree, known) - {name}
    functions.sort(reverse=True)
    simulator = [n for n in lines if n.split(".")[0] == "fedsim"]
    biggest = max(simulator, key=lines.get)
    print(f"tree: {root}")
    print(f"modules: {len(lines)} ({len(simulator)} in fedsim), {sum(lines.values())} lines")
    print(f"lines per fedsim module: median {statistics.median(lines[n] for n in simulator):.0f}, largest {lines[biggest]} ({biggest})")
    print("longest functions: " + ", ".join(f"{name} {n}" for n, name in functions[:4]))
    print(f"functions over 60 lines: {sum(n > 60 for n, _ in functions)}")
    found = cycles(graph)
    print(f"import cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    for label, argv in (("fedsim --help", ["--help"]), ("fedsim validate quickstart", ["validate", "scenarios/quickstart.yaml"])):
        seconds, torch = command_time(root, argv)
        print(f"{label}: {seconds:.2f} s (median of 5){', imports torch' if torch else ', no torch'}")


if __name__ == "__main__":
    main()
