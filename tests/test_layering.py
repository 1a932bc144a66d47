"""The package's one-way layering (README, "Layout"), checked on every import statement."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdiff"
# The foundation, in order: each module may import the ones before it, nothing else of mdiff.
FOUNDATION = ("mdiff", "mdiff.protocol", "mdiff.fileio", "mdiff.cdo", "mdiff.grid", "mdiff.variables",
              "mdiff.config")
NETWORK = ("mdiff.nn", "mdiff.checkpoint", "mdiff.train", "mdiff.rollout")


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside a sub-package
                base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level])
                out.add(f"{base}.{node.module}" if node.module else base)
            else:
                out.add(node.module)
    return out


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(sub: str):
    root = PACKAGE / sub
    return [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))


def of_mdiff(names: set[str]) -> set[str]:
    return {m for m in names if m == "mdiff" or m.startswith("mdiff.")}


def test_foundation_imports_only_the_foundation_before_it():
    for i, name in enumerate(FOUNDATION[1:], 1):
        path = PACKAGE / f"{name.split('.')[1]}.py"
        bad = of_mdiff(imports(path)) - set(FOUNDATION[:i])
        assert not bad, f"{path.name} imports {bad}; the foundation before it is {FOUNDATION[:i]}"


def test_data_and_nn_build_only_on_the_foundation():
    for sub, own in (("data", "mdiff.data"), ("nn", "mdiff.nn")):
        for path in modules(sub):
            bad = {m for m in of_mdiff(imports(path)) if m not in FOUNDATION and not m.startswith(own)}
            assert not bad, f"{path} imports {bad}"


def test_aimip_and_evaluate_never_touch_the_network_code():
    for sub in ("aimip", "evaluate"):
        for path in modules(sub):
            bad = {m for m in imports(path) if m.split(".")[0] == "torch" or m.startswith(NETWORK)}
            assert not bad, f"{path} imports {bad}"


def test_only_the_command_line_imports_the_command_line():
    """cli.py alone parses command lines: no module of the package imports it."""
    importers = [path for path in PACKAGE.rglob("*.py") if path.name != "cli.py" and "mdiff.cli" in imports(path)]
    assert not importers, f"{importers} import mdiff.cli"
    assert not any(name in ("add_arguments", "main") for path in PACKAGE.rglob("*.py") if path.name != "cli.py"
                   for name in _top_level_functions(path)), "a module other than cli.py defines main/add_arguments"


def _top_level_functions(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def test_the_rollout_reads_models_through_the_checkpoint_contract():
    """A model reaches a rollout through mdiff.checkpoint, never through the training code."""
    for path in [*modules("rollout"), PACKAGE / "checkpoint.py"]:
        bad = {m for m in imports(path) if m.startswith("mdiff.train")}
        assert not bad, f"{path.name} imports {bad}"


def test_no_module_reads_private_attributes_of_another_object():
    """Private names (``_x``) are read only on ``self``/``cls``: no module reaches into the
    internals of another module, class instance or library (torch, torch-harmonics)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "private attributes read: " + "; ".join(found)


def test_the_rollout_defines_no_network():
    """The rollout steps with the model's public API only: no module of it defines a torch
    module or uses torch's functional layers (one model path, issue 14)."""
    for path in modules("rollout"):
        tree = ast.parse(path.read_text())
        bases = {ast.unparse(b) for n in ast.walk(tree) if isinstance(n, ast.ClassDef) for b in n.bases}
        assert not {b for b in bases if "Module" in b}, f"{path.name} defines a torch module"
        assert "torch.nn.functional" not in imports(path) and "torch.nn" not in imports(path), path.name


def test_nothing_imports_snakemake():
    for path in PACKAGE.rglob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] == "snakemake"}, path
