"""The package's layering and the size of its function signatures, read from the source (AST).

The library (models/, losses/, datasets/, evaluate/) never imports the job (engine/, cli/), not
even inside a function; what both use (utils/, errors.py) imports neither; and no function takes
more than 8 parameters (self and cls not counted; *args and **kwargs counted as one each): a
longer list is a configuration object waiting to be named.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "real20m"
LIBRARY = ("models", "losses", "datasets", "evaluate")
JOB = ("real20m.engine", "real20m.cli")
MAX_PARAMETERS = 8


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """(line, the absolute names it may import) of every import statement anywhere in ``tree``,
    relative ones resolved; ``from x import y`` may import the module ``x.y``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                base = ".".join(parts[:len(parts) - node.level + is_package] + ([base] if base else []))
            found.append((node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names]))
    return found


def is_job(name: str) -> bool:
    return any(name == job or name.startswith(job + ".") for job in JOB)


def job_imports(path: Path, package: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(package.parent)}:{line} imports {next(filter(is_job, names))}"
            for line, names in imports(tree, module_name(path, package), path.name == "__init__.py")
            if any(map(is_job, names))]


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> int:
    arguments = function.args
    names = [arg.arg for arg in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
    count = len(names) + (arguments.vararg is not None) + (arguments.kwarg is not None)
    return count - (bool(names) and names[0] in ("self", "cls"))


def long_signatures(path: Path, package: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(package.parent)}:{node.lineno} {getattr(node, 'name', 'lambda')} "
            f"takes {parameter_count(node)}"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            and parameter_count(node) > MAX_PARAMETERS]


def library_files() -> list[Path]:
    return sorted(path for layer in LIBRARY for path in (PACKAGE / layer).rglob("*.py"))


def test_the_library_never_imports_the_job():
    assert len(library_files()) > 40   # the layers are where this test looks for them
    assert [line for path in library_files() for line in job_imports(path)] == []


def test_the_shared_helpers_import_nothing_above_them():
    """utils/ and errors.py sit below the library and the job, which both use them."""
    bottom = sorted((PACKAGE / "utils").rglob("*.py")) + [PACKAGE / "errors.py"]
    above = [f"{path.name}:{line} imports {name}" for path in bottom
             for line, names in imports(ast.parse(path.read_text(encoding="utf-8")), module_name(path, PACKAGE),
                                        path.name == "__init__.py")
             for name in names[:1]
             if name.startswith("real20m.") and not name.startswith(("real20m.utils", "real20m.errors"))]
    assert above == []


def test_no_function_takes_more_than_eight_parameters():
    assert [line for path in sorted(PACKAGE.rglob("*.py")) for line in long_signatures(path)] == []


@pytest.mark.parametrize("source, where", [
    ("from real20m.engine.checkpoint import load_checkpoint\n", "real20m/models/bad.py"),
    ("def f():\n    import real20m.cli.train\n", "real20m/losses/bad.py"),
    ("def f():\n    from ..engine import distributed\n", "real20m/evaluate/bad.py"),
    ("from real20m import cli\n", "real20m/datasets/sub/__init__.py"),
])
def test_a_job_import_in_the_library_is_found(tmp_path, source, where):
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    [found] = job_imports(path, tmp_path / "real20m")
    assert found.startswith(f"{where}:") and " imports real20m." in found


def test_a_long_signature_is_found_and_self_is_not_counted(tmp_path):
    path = tmp_path / "real20m" / "module.py"
    path.parent.mkdir()
    path.write_text("class A:\n    def m(self, a, b, c, d, e, f, g, h): pass\n"
                    "def f(a, b, c, d, e, f, g, *rest, **options): pass\n"
                    "g = lambda a, b, c, d, e, f, g, h, i: a\n")
    assert long_signatures(path, tmp_path / "real20m") == ["real20m/module.py:3 f takes 9", "real20m/module.py:4 lambda takes 9"]
