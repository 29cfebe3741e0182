"""The tree keeps its architecture: the algorithm layer stays free of Ray, vLLM and OpenRLHF,
CPU mode stays out of GPU runs, and the README and docs name only paths that exist."""

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
