"""Handing memory back once start-up is over, so the runtime fits a Raspberry Pi.

Two kinds of memory stay resident after start-up although steady state never touches them:

* heap that start-up freed (model parsing, imports): glibc keeps it mapped; `malloc_trim`
  returns it (about 9 MiB).
* pages of libraries used only to get going: LLVM (libllvmlite) compiles or loads the numba
  kernels and is not called again once they are warm; onnxruntime's session set-up touches far
  more of its library than inference does. These are clean, file-backed, read-only pages:
  `madvise(MADV_PAGEOUT)` (Linux 5.4+) drops them, and any page needed later is read back from
  the file on first touch. Here that takes resident memory from about 200 to 120 MiB
  (bench/runtime.py gives the figure on JACK).

Only libraries the audio callback never runs are paged out: the callback's code (the numba
kernel, loaded into anonymous memory, Python, NumPy, PortAudio) stays resident, so it never
takes a page fault on the SD card. Calling this again after a later compile is harmless.
"""

from __future__ import annotations

import ctypes
import errno
import os

MADV_PAGEOUT = 21
# Libraries of start-up only: LLVM as numba ships it or as a distribution links it, and
# onnxruntime's extension (inference runs on the worker thread, which may fault a page back).
COLD_LIBRARIES = ("libllvmlite", "libLLVM", "onnxruntime_pybind11_state")


def return_freed_memory() -> None:
    """glibc's free heap back to the system; a no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def page_out_cold_libraries(names: tuple[str, ...] = COLD_LIBRARIES,
                            maps_path: str = "/proc/self/maps") -> dict[str, int]:
    """Advise the kernel to drop the resident pages of the read-only mappings of `names`;
    returns the bytes advised per library (empty where /proc or madvise is missing, or the
    kernel is older than 5.4)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return {}
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    advised: dict[str, int] = {}
    try:
        with open(maps_path) as handle:
            lines = handle.readlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or "w" in parts[1]:  # writable pages may be dirty: leave them
            continue
        library = os.path.basename(parts[5])
        if not any(name in library for name in names):
            continue
        start, end = (int(value, 16) for value in parts[0].split("-"))
        if madvise(start, end - start, MADV_PAGEOUT) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # MADV_PAGEOUT unknown to this kernel
                return {}
            continue
        advised[library] = advised.get(library, 0) + end - start
    return advised
