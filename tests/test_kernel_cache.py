"""The numba cache follows the kernels' sources: a change in any file is a new directory."""

from __future__ import annotations

import os

from device.core import kernel_cache


def test_a_change_in_a_callee_file_is_a_new_cache_directory(tmp_path):
    package = tmp_path / "pkg"
    (package / "dsp").mkdir(parents=True)
    (package / "dsp" / "layout.py").write_text("S_MODE = 0\n")
    (package / "dsp" / "kernel.py").write_text("from pkg.dsp.layout import S_MODE\n")
    before = kernel_cache.sources_digest([package])
    assert kernel_cache.sources_digest([package]) == before
    (package / "dsp" / "layout.py").write_text("S_MODE = 1\n")
    assert kernel_cache.sources_digest([package]) != before


def test_the_versioned_directory_is_kept_by_children_and_other_versions_are_removed(tmp_path, monkeypatch):
    stale = tmp_path / (kernel_cache.PREFIX + "0000000000000000")
    stale.mkdir()
    (stale / "old.nbi").write_bytes(b"")
    unrelated = tmp_path / "keep-me"
    unrelated.mkdir()
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    import numba.core.config

    # The rest of the session keeps its own cache directory.
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
    target = kernel_cache.use_versioned_cache()
    assert os.path.dirname(target) == str(tmp_path)
    assert os.path.basename(target).startswith(kernel_cache.PREFIX)
    assert os.environ["NUMBA_CACHE_DIR"] == target
    assert not stale.exists() and unrelated.exists()
    # A child process inherits the versioned directory and keeps it.
    assert kernel_cache.use_versioned_cache() == target


def test_without_the_variable_numba_keeps_its_default(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert kernel_cache.use_versioned_cache() is None
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_importing_the_runtime_points_numba_at_the_versioned_directory(tmp_path):
    """The versioning happens on import of device.core, before any kernel is compiled or loaded."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = ("import numba.core.config as c; import device.core.engine; print(c.CACHE_DIR)")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    shown = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, capture_output=True,
                           text=True).stdout.strip()
    assert Path(shown).parent == tmp_path and Path(shown).name.startswith(kernel_cache.PREFIX), shown
