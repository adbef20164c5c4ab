"""The package's layers (docs/architecture.md), checked by import-linter as CI checks them: no upward import,
no circle, nothing inside the package importing the package root; and a deliberately added upward import is
caught, with the import named."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the contracts of pyproject.toml in `cwd`, on the npunet package in package_parent."""
    env = {"PYTHONPATH": str(package_parent), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    result = lint_imports(REPO, REPO)
    report = result.stdout[result.stdout.find("Contracts"):]
    print("\n" + report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in report


def test_nothing_inside_imports_the_package_root():
    import grimp
    graph = grimp.build_graph("npunet")
    importers = sorted(graph.find_modules_that_directly_import("npunet"))
    print(f"\n  modules importing npunet itself: {importers}")
    assert importers == []


def test_an_upward_import_fails_with_the_import_named(tmp_path):
    """A copy of the package where a kernel imports the command line: lint-imports must fail and name it."""
    shutil.copytree(REPO / "npunet", tmp_path / "npunet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    conv = tmp_path / "npunet" / "kernels" / "conv.py"
    conv.write_text(conv.read_text() + "\nfrom npunet.cli import main  # an upward import, on purpose\n")
    result = lint_imports(tmp_path, tmp_path)
    print("\n" + result.stdout[result.stdout.find("Broken contracts"):][:800])
    assert result.returncode != 0
    assert "npunet.kernels.conv -> npunet.cli" in result.stdout
