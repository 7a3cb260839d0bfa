"""The package's shape: each stage imports only the stages before it (DESIGN.md's layout), commands stay a parser
and a call, functions stay short."""

import ast
import configparser
import importlib
from pathlib import Path

import ultra

STAGES = [
    "errors",
    "_lazy",
    "files",
    "pictures",
    "backbone",
    "data",
    "graphs",
    "head",
    "readout",
    "deploy",
    "evaluation",
    "training",
    "analysis",
    "demo",
    "cli",
]
"""Modules and packages of ``ultra`` in data-flow order; the first four are the bottom every stage may use."""
BOTTOM = {"errors", "_lazy", "files", "pictures", "__version__"}  # and the package's version
ROOT = Path(ultra.__file__).parent


def _imports(source: str, path: Path) -> set[str]:
    """The ``ultra`` modules that ``source`` (the text of the module at ``path``) imports, relative imports resolved."""
    package = ["ultra", *path.relative_to(ROOT).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{alias.name}" for alias in node.names] if not node.module else [target]
            found.update(n for n in names if n.startswith("ultra."))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ultra."))
    return found


def _backward_imports(source: str, path: Path) -> list[str]:
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    later = [
        m
        for m in _imports(source, path)
        if (stage := m.split(".")[1]) != own and stage not in BOTTOM and STAGES.index(stage) > STAGES.index(own)
    ]
    return [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(later)]


def test_every_stage_imports_only_the_stages_before_it():
    wrong = [
        line
        for path in ROOT.rglob("*.py")
        if path.name != "__init__.py" or path.parent != ROOT
        for line in _backward_imports(path.read_text(), path)
    ]
    assert not wrong, wrong


def test_the_layering_check_sees_a_stage_reaching_up():
    head = ROOT / "head" / "module.py"
    assert _backward_imports("from ..evaluation.metrics import as_floats\n", head) == [
        "head/module.py imports ultra.evaluation.metrics"
    ]
    assert _backward_imports("from ..readout import segmenter\n", ROOT / "demo" / "app.py") == []


def _console_scripts() -> dict[str, str]:
    """``{script: module}`` of setup.cfg's console scripts."""
    parser = configparser.ConfigParser()
    parser.read(ROOT.parent / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.split(":")[0].strip() for name, target in (line.split("=") for line in lines)}


def test_command_modules_are_a_parser_and_a_call():
    """Every console script is a module of ``ultra.cli`` holding its parser (``build_parser``, named for the script;
    ultra-train's is the training CLI's) and the call (``main``), with no class of its own and under 150 lines: the
    work lives in the stages it calls."""
    scripts = _console_scripts()
    assert {"ultra-train", "ultra-eval", "ultra-segment", "ultra-demo"} <= set(scripts)
    for script, name in scripts.items():
        assert name.startswith("ultra.cli."), (script, name)
        module = importlib.import_module(name)
        assert callable(module.main), script
        if script != "ultra-train":
            assert module.build_parser().prog == script, script
        tree = ast.parse(Path(module.__file__).read_text())
        assert not [node.name for node in tree.body if isinstance(node, ast.ClassDef)], script
    long = {p.name: n for p in (ROOT / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > 150}
    assert not long, long


def test_no_function_of_the_package_is_over_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60
    ]
    assert not long, long
