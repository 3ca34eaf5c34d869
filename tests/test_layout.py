"""The house rules, checked: imports run one way (trainer -> mnist_common <- server, bench and
tasks.py on top), no module imports itself through others, web/ holds no Python, and the facts
Python, Rust and JS each repeat (input size, classes) agree."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_common import constants, preprocess
from mnist_common.paths import ROOT, WEB_DIR

#: Which project packages each package may import (itself always). ``tests`` may import all.
ALLOWED = {
    "mnist_common": set(),
    "trainer": {"mnist_common"},
    "server": {"mnist_common"},
    "bench": {"mnist_common", "trainer", "server"},
    "tasks": {"mnist_common", "trainer", "server", "bench"},
}
PACKAGES = set(ALLOWED)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "tasks.py"] + [p for pkg in PACKAGES - {"tasks"} for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body (lazy imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        top = source.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                bad.append(f"{source} imports {target}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (one path per cycle found by depth-first search)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_imports_run_one_way():
    assert layer_violations(import_graph()) == []


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    graph = import_graph()
    graph["mnist_common.preprocess"] = graph["mnist_common.preprocess"] | {"trainer.model"}
    graph["trainer.model"] = graph["trainer.model"] | {"trainer.train"}
    assert layer_violations(graph) == ["mnist_common.preprocess imports trainer.model"]
    assert any("trainer.model" in c and "trainer.train" in c for c in cycles(graph))


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "trainer.augment" in graph["trainer.evaluation.evaluate"]  # `from ..augment import`
    assert "mnist_common.preprocess" in graph["server.api"]  # imported inside a function


def defined_names(path: Path) -> set[str]:
    """The names a module defines at its top level: defs, classes, assignments and imports,
    also those inside a top-level ``if`` or ``try`` (e.g. a fallback on ImportError)."""
    names = set()
    for statement in ast.parse(path.read_text(), str(path)).body:
        nodes = ast.walk(statement) if isinstance(statement, (ast.If, ast.Try)) else [statement]
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def missing_imports(files: list[Path], modules: dict[str, Path]) -> list[str]:
    """``from project.module import name`` statements (anywhere, lazy ones too) whose name the
    module does not define: an ImportError that waits for the test or code path that runs it."""
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in modules:
                continue
            defined = defined_names(modules[node.module])
            for alias in node.names:
                if alias.name not in defined and f"{node.module}.{alias.name}" not in modules:
                    bad.append(f"{path.name}:{node.lineno}: {node.module} has no {alias.name}")
    return bad


def test_every_imported_name_exists():
    modules = project_modules()
    modules.update({module_name(p): p for p in (ROOT / "tests").glob("*.py")})
    assert missing_imports(sorted(modules.values()), modules) == []


def test_a_lazy_import_of_a_missing_name_is_found(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("def f():\n    from trainer.model import Net, NoSuchThing\n")
    assert missing_imports([stray], project_modules()) == ["stray.py:2: trainer.model has no NoSuchThing"]


def test_web_is_a_static_site_without_python():
    assert sorted(p.relative_to(ROOT) for p in WEB_DIR.rglob("*.py") if "node_modules" not in p.parts) == []


def js_constant(name: str, source: str = "preprocess.js") -> int:
    match = re.search(rf"export const {name} = (\d+);", (WEB_DIR / source).read_text())
    assert match, f"web/{source} no longer exports {name}"
    return int(match.group(1))


def test_python_and_js_agree_on_the_input():
    assert preprocess.MNIST_SIZE == js_constant("MNIST_SIZE") == constants.IMAGE_SIZE == 28
    assert preprocess.DIGIT_BOX == js_constant("DIGIT_BOX") == 20
    assert constants.NUM_PIXELS == 28 * 28
    assert len(constants.CLASS_NAMES) == constants.NUM_CLASSES == js_constant("NUM_CLASSES", "channel.js") == 10


@pytest.mark.native
def test_python_and_rust_agree_on_the_input_and_classes():
    mnist_infer = pytest.importorskip("mnist_infer")
    from mnist_common.plan import ARCHITECTURE

    assert mnist_infer.INPUT_LEN == constants.NUM_PIXELS
    assert mnist_infer.NUM_CLASSES == constants.NUM_CLASSES
    assert mnist_infer.ARCHITECTURE == ARCHITECTURE


def test_serving_needs_no_pytorch(tmp_path):
    """`./dev serve` installs no PyTorch: the server, the tasks module and the weights
    conversions (`--weights-dtype f16|int8`) import none of torch, torchvision or matplotlib."""
    script = (
        "import sys, tasks, server.app, server.static, server.classify\n"
        "from mnist_common.weights import convert_weights\n"
        "from mnist_common.paths import DEFAULT_WEIGHTS\n"
        f"for dtype in ('f16', 'int8'): convert_weights(DEFAULT_WEIGHTS, {str(tmp_path)!r} + '/' + dtype, dtype)\n"
        "server.static.list_models(server.static.MODELS_DIR)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib', 'skimage') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def static_imports(module: str) -> set[str]:
    """The web/ modules `module` imports statically (`import ... from "./x.js"`), transitively."""
    seen, todo = set(), [module]
    while todo:
        source = (WEB_DIR / todo.pop()).read_text()
        for name in re.findall(r'^\s*(?:import|export)\b[^;]*?from\s+"\./([\w.-]+\.js)"', source, re.M | re.S):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def test_the_page_loads_its_modules_as_two_up_to_date_bundles():
    """index.html loads app.bundle.js and starts worker.bundle.js (``tasks.bundle_page``:
    esbuild), never a module of its own; each bundle is built from its entry module and modules
    that entry imports (by its source map; esbuild leaves out a module none of whose code is
    used), and is newer than every module, as `invoke test` and `invoke serve` leave it."""
    import tasks

    html = (WEB_DIR / "index.html").read_text()
    assert re.findall(r'<script type="module" src="([\w.-]+)">', html) == ["app.bundle.js"]
    assert re.findall(r'new Worker\("([\w.-]+)"', html) == ["worker.bundle.js"]
    assert "modulepreload" not in html
    for entry, bundle in tasks.PAGE_BUNDLES.items():
        sources = set(json.loads((WEB_DIR / f"{bundle}.map").read_text())["sources"])
        assert entry in sources and sources <= {entry} | static_imports(entry), (bundle, sources)
    assert tasks.bundles_up_to_date()
