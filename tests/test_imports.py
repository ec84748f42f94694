"""The package's import structure: no cycles between its modules (imports inside functions included), and the
layering the module map in docs/layout.md promises (rollout never reaches into the learner or the trainers)."""
import ast
from pathlib import Path

import rlhf_dist

ROOT = Path(rlhf_dist.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every rlhf_dist module `path` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            # `from rlhf_dist import checkpoint` names a module; `from rlhf_dist.x import f` names x.
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != "rlhf_dist":
                out.add(n)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, modules) - {m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_graph_sees_the_package():
    graph = import_graph()
    assert {"rlhf_dist.trainers.ppo", "rlhf_dist.runtime.roles", "rlhf_dist.rollout.engine"} <= set(graph)
    assert "rlhf_dist.runtime.roles" in graph["rlhf_dist.trainers.rl_roles"]


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_rollout_does_not_import_learner_or_trainers():
    bad = [
        f"{m} imports {n}"
        for m, deps in import_graph().items()
        if m.startswith("rlhf_dist.rollout")
        for n in deps
        if n.startswith(("rlhf_dist.learner", "rlhf_dist.trainers"))
    ]
    assert not bad, "; ".join(bad)


def test_module_map_matches_the_tree():
    import re

    section = (ROOT.parent / "docs" / "layout.md").read_text()
    mapped = set(re.findall(r"^\| `rlhf_dist/([^`]+?)/?` \|", section, flags=re.M))
    tree = {p.name for p in ROOT.iterdir() if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert mapped == tree, f"in the tree, not the map: {sorted(tree - mapped)}; in the map, not the tree: {sorted(mapped - tree)}"
    # Files a package's row names must exist.
    for pkg, row in re.findall(r"^\| `rlhf_dist/(\w+)/` \| (.*)$", section, flags=re.M):
        for name in re.findall(r"`(\w+\.py)`", row):
            assert (ROOT / pkg / name).is_file(), f"docs/layout.md names rlhf_dist/{pkg}/{name}, which does not exist"


def test_library_packages_do_not_import_commands():
    """Commands sit on top: nothing below them (config, data, rollout, rewards, learner, sync, runtime,
    trainers, algorithms) reaches up into rlhf_dist.commands; only the entry point does."""
    bad = [
        f"{m} imports {n}"
        for m, deps in import_graph().items()
        if not m.startswith("rlhf_dist.commands") and m != "rlhf_dist.__main__"
        for n in deps
        if n.startswith("rlhf_dist.commands")
    ]
    assert not bad, "; ".join(bad)


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
