"""One base class for the errors that mean "the user's input is wrong": every error class of the
package derives from it (and keeps its built-in base), so each entry point catches it alone."""
import ast
from pathlib import Path

from real20m.config import ConfigError
from real20m.datasets.annotations import QueryFileError
from real20m.errors import InputError
from real20m.utils.checkpoint_io import CheckpointError

PACKAGE = Path(__file__).resolve().parents[1] / "real20m"


def error_classes() -> dict[str, list[str]]:
    """{"path:Class": [base names]} of every class named *Error in the package, but the base itself."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error") and node.name != "InputError":
                bases = [base.id if isinstance(base, ast.Name) else ast.unparse(base) for base in node.bases]
                found[f"{path.relative_to(PACKAGE.parent)}:{node.name}"] = bases
    return found


def test_every_error_class_of_the_package_is_an_input_error():
    classes = error_classes()
    assert len(classes) >= 15
    input_errors = {"InputError"}
    while True:   # a class is one if a base is (QueryFileError derives from AnnotationError)
        grown = input_errors | {key.split(":")[1] for key, bases in classes.items() if input_errors & set(bases)}
        if grown == input_errors:
            break
        input_errors = grown
    assert [key for key in classes if key.split(":")[1] not in input_errors] == []


def test_the_built_in_base_is_kept():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, InputError)
    assert issubclass(QueryFileError, ValueError) and issubclass(QueryFileError, InputError)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(CheckpointError, InputError)
