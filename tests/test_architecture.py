"""The package's shape: its layers hold (import-linter's contract in pyproject.toml), no module
imports in a cycle, and modules stay small enough to read in one sitting."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "longctx"


def test_the_layers_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_no_module_imports_in_a_cycle():
    import grimp  # import-linter's import graph

    graph = grimp.build_graph("longctx")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    # a package's __init__ re-exporting its own modules is not a cycle of concerns
    edges = {m: {t for t in ts if not t.startswith(m + ".") and not m.startswith(t + ".")} for m, ts in edges.items()}
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycle.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle[:3]


def test_no_module_is_longer_than_about_400_lines_without_saying_why():
    long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 450 and "Why one module" not in text[:3000]:
            long.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
    assert not long, long
