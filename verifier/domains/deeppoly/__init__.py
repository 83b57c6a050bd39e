"""DeepPoly: back-substituted linear bounds (state, relaxations, transfers, kernels)."""
