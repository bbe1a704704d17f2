"""Package layering: the subpackages of srpo_megatron import each other without a cycle.

Read statically (ast), so function-level imports count too: a cycle hidden inside a function still
ties two layers together."""

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "srpo_megatron"


def _unit(module: str) -> str:
    """`srpo_megatron.eval.evaluate` -> `eval`; top-level modules are their own unit."""
    return module.split(".")[1]


def package_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        source = "srpo_megatron." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        graph.add_node(_unit(source))
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("srpo_megatron.") and _unit(name) != _unit(source):
                    graph.add_edge(_unit(source), _unit(name))
    return graph


def test_no_import_cycle_between_subpackages():
    cycles = list(nx.simple_cycles(package_graph()))
    assert not cycles, f"import cycles between srpo_megatron subpackages: {cycles}"


def test_preprocess_does_not_import_eval():
    """Evaluation reads problem files through preprocess; sampling and scoring live below both."""
    graph = package_graph()
    assert not graph.has_edge("preprocess", "eval") and graph.has_edge("eval", "preprocess")
