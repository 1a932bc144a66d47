"""The package's one-way layering (README, "Layout"), checked on every import statement."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdiff"
FOUNDATION = {"mdiff.variables", "mdiff.grid", "mdiff.config", "mdiff.fileio", "mdiff"}


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


def modules(sub: str):
    root = PACKAGE / sub
    return [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))


def allowed(name: str, prefixes: tuple[str, ...]) -> bool:
    return not name.startswith("mdiff") or name in FOUNDATION or name.startswith(prefixes)


def test_foundation_imports_nothing_of_mdiff():
    for sub in ("variables.py", "grid.py", "fileio.py", "config.py"):
        for path in modules(sub):
            bad = {m for m in imports(path) if m.startswith("mdiff") and m not in ("mdiff.fileio",)}
            assert not bad, f"{path.name} imports {bad}"


def test_data_and_nn_build_only_on_the_foundation():
    for sub, own in (("data", "mdiff.data"), ("nn", "mdiff.nn")):
        for path in modules(sub):
            bad = {m for m in imports(path) if not allowed(m, (own,)) and m != "mdiff.cli"}
            assert not bad, f"{path} imports {bad}"


def test_aimip_and_evaluate_never_touch_the_network_code():
    for sub in ("aimip", "evaluate"):
        for path in modules(sub):
            bad = {m for m in imports(path) if m.split(".")[0] == "torch"
                   or m.startswith(("mdiff.nn", "mdiff.train", "mdiff.rollout"))}
            assert not bad, f"{path} imports {bad}"


def test_nothing_imports_snakemake():
    for path in PACKAGE.rglob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] == "snakemake"}, path
