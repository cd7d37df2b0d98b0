"""Signal processing kernels: the numba FxLMS block kernel and its NumPy reference, the state
layout they share, least-squares FIR fits and secondary-path identification."""
