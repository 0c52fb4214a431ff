"""The package's public face: what `import intriguing_jax` gives, no import cycles, the README in step."""

import ast
import pathlib

import intriguing_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_entry_points_and_modules_are_exported():
    for name in ("lbfgs_attack", "AttackConfig", "AttackResult", "fit", "trained", "TrainConfig", "gaussian_noise",
                 "transfer", "units", "spectral", "sweep", "lbfgsb", "train", "zoo"):
        assert name in intriguing_jax.__all__ and hasattr(intriguing_jax, name), name
    assert all(hasattr(intriguing_jax, n) for n in intriguing_jax.__all__)
    assert not [n for n in intriguing_jax.__all__ if n.startswith("_") and n != "__version__"]


def test_the_attack_results_of_the_engine_and_the_interface_agree():
    from intriguing_jax import _attack_engine
    assert _attack_engine.Outcome._fields == intriguing_jax.AttackResult._fields


def _imports(path: pathlib.Path) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "intriguing_jax":
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("intriguing_jax."):
            deps.add(node.module.split(".")[1])
    return deps


def test_no_import_cycles_inside_the_package():
    graph = {p.stem: _imports(p) - {p.stem} for p in (ROOT / "intriguing_jax").glob("*.py") if p.stem != "__init__"}
    done, active = set(), []

    def visit(module):
        assert module not in active, f"import cycle: {' -> '.join(active[active.index(module):] + [module])}"
        if module in done:
            return
        active.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        active.pop()
        done.add(module)
    for m in graph:
        visit(m)


def test_the_readme_api_section_names_every_export():
    readme = (ROOT / "README.md").read_text()
    api = readme[readme.index("## The API in five lines"):readme.index("## Scaling out")]
    missing = [n for n in intriguing_jax.__all__ if n != "__version__" and f"`{n}" not in api and f".{n}`" not in api
               and f"{n}(" not in api]
    assert not missing, f"README's API section does not mention {missing}"


def test_importing_the_library_loads_neither_the_harness_nor_matplotlib():
    import subprocess
    import sys
    code = ("import sys, intriguing_jax; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'matplotlib', 'experiments', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", f"import intriguing_jax loaded {out.stdout.strip()}"


def test_the_library_imports_nothing_from_the_harness():
    offenders = [p.name for p in (ROOT / "intriguing_jax").glob("*.py") if "experiments" in p.read_text()
                 and any(isinstance(n, ast.ImportFrom) and (n.module or "").startswith("experiments")
                         for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders, offenders
