"""The runtime every backend shares and that knows no backend: the engine and its numba kernels
(`dsp`), the session, the worker and its ring buffer, the wearer's settings, features, the
classifier and the causality verdict."""

from device.core.kernel_cache import use_versioned_cache

# Before any kernel is compiled or loaded: a cache of another version's kernels is not used.
use_versioned_cache()
