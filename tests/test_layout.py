"""The tree keeps its architecture: the algorithm layer stays free of Ray, vLLM and OpenRLHF,
no module imports one that imports it back, CPU mode stays out of GPU runs, and the README
and docs name only paths that exist."""

import ast
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "openrlhf_meds")


def _fresh_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return set(out.split())


def test_algorithm_layer_imports_no_ray_vllm_or_openrlhf():
    names = sorted(
        f[:-3] for f in os.listdir(os.path.join(PACKAGE, "meds")) if f.endswith(".py") and f != "__init__.py"
    )
    loaded = _fresh_modules("import openrlhf_meds.meds\n" + "\n".join(f"import openrlhf_meds.meds.{n}" for n in names))
    assert "openrlhf_meds.meds.memory" in loaded  # the imports really ran
    for banned in ("ray", "vllm", "openrlhf", "deepspeed"):
        assert banned not in loaded, f"openrlhf_meds.meds imports {banned}"


def test_entry_point_loads_no_cpu_mode():
    loaded = _fresh_modules("import openrlhf_meds.train_grpo, openrlhf_meds.integration.openrlhf")
    assert "openrlhf_meds.train_grpo" in loaded
    assert not any(m == "openrlhf_meds.cpu" or m.startswith("openrlhf_meds.cpu.") for m in loaded)


def _module_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, every import statement counted (a function's
    too: a cycle through a deferred import is still a cycle a reader has to hold)."""
    paths = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                paths[name.removesuffix(".__init__")] = os.path.join(root, f)
    graph = {}
    for name, path in paths.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in paths else module for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    graph = _module_graph()
    assert "openrlhf_meds.memory.routing" in graph["openrlhf_meds.memory.actor"]  # the graph sees imports
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and finds one


def _imports_of_cpu(path: str) -> list[tuple[int, str]]:
    """(line, enclosing function) of each import of openrlhf_meds.cpu in a module."""
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    tree = ast.parse(open(path).read())
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            targets = []
            if isinstance(child, ast.ImportFrom):
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                module = f"{base}.{child.module}" if child.level else child.module
                targets = [module or base] + [f"{module or base}.{a.name}" for a in child.names]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            if any(t == "openrlhf_meds.cpu" or t.startswith("openrlhf_meds.cpu.") for t in targets):
                found.append((child.lineno, function))
            visit(child, name)

    visit(tree, None)
    return found


# The entry points' --cpu branches (inside their main functions) may import CPU mode.
CPU_BRANCHES = {("openrlhf_meds/train_grpo.py", "main"), ("openrlhf_meds/eval/__main__.py", "main")}


def test_only_the_cpu_branch_and_the_demo_import_cpu_mode():
    offenders = []
    for root, _, files in os.walk(PACKAGE):
        rel = os.path.relpath(root, PACKAGE).split(os.sep)[0]
        if rel in ("cpu", "demo"):
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                for line, function in _imports_of_cpu(path):
                    if (os.path.relpath(path, REPO), function) not in CPU_BRANCHES:
                        offenders.append(f"{os.path.relpath(path, REPO)}:{line}")
    assert offenders == []
    assert [f for _, f in _imports_of_cpu(os.path.join(PACKAGE, "train_grpo.py"))] == ["main"]


TOP = (
    "openrlhf_meds/",
    "tests/",
    "docs/",
    "benchmarks/",
    "examples/",
    "scripts/",
    "patches/",
    "ray_configs/",
    "requirements/",
    ".ci/",
)
FILES = ("README.md", "setup.py", "pyproject.toml", "pytest.ini")


def _named_paths(text: str) -> set[str]:
    """Repository paths a markdown text names: in backticks, links, or as bare docs/... words."""
    candidates = set(re.findall(r"`([^`\s]+)`", text)) | set(re.findall(r"\]\(([^)\s]+)\)", text))
    candidates |= set(re.findall(r"(?<![\w/.])((?:docs|patches)/[\w./-]+\.md)", text))
    paths = set()
    for c in candidates:
        c = c.split("::")[0].rstrip(".,:;")
        if c.startswith(TOP) or c in FILES:
            if not any(ch in c for ch in "<>*{}$"):
                paths.add(c)
    return paths


DOCS = ["README.md", "patches/README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md")
)


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_the_docs_name_exists(doc):
    paths = _named_paths(open(os.path.join(REPO, doc)).read())
    missing = sorted(p for p in paths if not os.path.exists(os.path.join(REPO, p)))
    assert missing == [], f"{doc} names paths that do not exist"


def test_the_path_finder_finds_paths():
    assert _named_paths("see `openrlhf_meds/meds/memory.py` and [x](docs/a.md), docs/b.md.") == {
        "openrlhf_meds/meds/memory.py",
        "docs/a.md",
        "docs/b.md",
    }


def test_readme_is_short():
    assert len(open(os.path.join(REPO, "README.md")).read().splitlines()) <= 200


@pytest.mark.parametrize("lane", [[], ["--fast"]])
def test_the_fast_lane_leaves_out_the_slow_tests(lane):
    command = ["bash", os.path.join(REPO, "scripts", "run.sh"), "test", *lane]
    out = subprocess.run(
        [*command, "--collect-only", "-q", "tests/demo/test_task.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    slow = "test_task.py::test_reward_file_through_openrlhf_executor"
    assert ("test_task.py::test_score" in out.stdout) and ((slow in out.stdout) == (not lane)), out.stdout


SUBPACKAGES = sorted(d for d in os.listdir(PACKAGE) if os.path.isfile(os.path.join(PACKAGE, d, "__init__.py")))


def test_the_subpackages_are_found():
    assert {"meds", "memory", "engine", "integration", "cpu", "demo", "tools"} <= set(SUBPACKAGES)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_module_is_named_in_the_readme_tree_and_its_package_docstring(package):
    folder = os.path.join(PACKAGE, package)
    modules = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("__"))
    readme = open(os.path.join(REPO, "README.md")).read().splitlines()
    row = next(line for line in readme if line.startswith(f"| `openrlhf_meds/{package}/`"))
    docstring = ast.get_docstring(ast.parse(open(os.path.join(folder, "__init__.py")).read())) or ""
    assert modules and [m for m in modules if f"`{m}.py`" not in row] == [], row
    assert [m for m in modules if f"`{m}" not in docstring] == [], docstring
