"""The runtime every backend shares and that knows no backend: the engine and its numba kernels
(`dsp`), the session, the worker and its ring buffer, the wearer's settings, features, the
classifier and the causality verdict."""
