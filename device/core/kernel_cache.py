"""One numba cache directory per version of the kernels' sources.

numba's on-disk cache (`cache=True`) is checked against the source file of each compiled
function only. A kernel that calls a kernel in another file (the ears wrapper and the
simulator's closed loop call `process_block`; `process_block` reads the slot numbers of
`layout`) keeps its cached machine code when only the callee's file changes: after an upgrade
it would run the old controller against the new state layout. So `NUMBA_CACHE_DIR` gets a
subdirectory named after a hash of every source file of the runtime and the simulator, and
the subdirectories of other versions are removed. Without `NUMBA_CACHE_DIR`, numba's own
default (`__pycache__` beside the sources) is left alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

PREFIX = "kernels-"
_PACKAGES = ("device", "simulator")


def sources_digest(roots: list[Path]) -> str:
    """sha256 over the relative paths and bytes of every .py file under `roots`, in order."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _package_roots() -> list[Path]:
    here = Path(__file__).resolve()
    device_root = here.parent.parent
    roots = [device_root]
    simulator_root = device_root.parent / "simulator"
    if simulator_root.is_dir():
        roots.append(simulator_root)
    return roots


def use_versioned_cache() -> str | None:
    """Point numba's cache at NUMBA_CACHE_DIR/kernels-<digest> (idempotent: a child process
    that inherits the result keeps it); returns that directory, or None without the variable."""
    base = os.environ.get("NUMBA_CACHE_DIR")
    if not base:
        return None
    name = PREFIX + sources_digest(_package_roots())
    base_path = Path(base)
    if base_path.name == name:
        target = base_path
    else:
        target = base_path / name
        try:
            for sibling in base_path.glob(PREFIX + "*"):
                if sibling.name != name and sibling.is_dir():
                    shutil.rmtree(sibling, ignore_errors=True)
        except OSError:
            pass  # an unreadable cache directory: numba reports it when it writes
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:
        numba_config.CACHE_DIR = str(target)
    return str(target)
