"""The package layers point one way (the contracts are in pyproject.toml, [tool.importlinter])."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    beside_python = Path(sys.executable).with_name("lint-imports")
    return str(beside_python) if beside_python.exists() else shutil.which("lint-imports")


def test_imports_follow_the_layers_and_the_agent_sees_only_the_contract():
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_reverse_import_breaks_the_layers(tmp_path):
    """The check has teeth: a contract module that imports the core is reported."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", ".cache", "out", "*.wav", "*.onnx"))
    spool = tree / "device" / "contract" / "spool.py"
    spool.write_text(spool.read_text() + "\nfrom device.core import engine  # noqa: E402,F401\n")
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)})
    assert result.returncode != 0
    assert "device.contract.spool -> device.core.engine" in result.stdout
