"""DeepZono: zonotopes with Numba kernels (state, transfers, kernels by layer family)."""
