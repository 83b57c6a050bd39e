"""The codes by which Numba kernels tell the smooth and piecewise-linear activations apart."""

from __future__ import annotations

from verifier.network import Relu, Sigmoid, Tanh

RELU = 0
SIGMOID = 1
TANH = 2
CODES = {Relu: RELU, Sigmoid: SIGMOID, Tanh: TANH}  # layer kind -> kernel code
