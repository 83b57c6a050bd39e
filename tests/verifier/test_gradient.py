"""Margin gradients (which steer deep networks' radius searches) match finite differences on
every layer kind; the linear radius and activation depth of known networks."""

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.verifier import onnx_builders
from tests.verifier.test_deepzono_graphs import _random_dag
from verifier.gradient import VJPS, activation_depth, linear_radius, margin_gradients
from verifier.network import Dense, Layer, Network
from verifier.onnx.importer import from_onnx_model, load_onnx

MODELS = Path(__file__).resolve().parents[2] / "models"


def _check_against_differences(net, x, rng, h=1e-6):
    C = rng.normal(size=(3, net.n_outputs))
    grads, logits = margin_gradients(net, x, C)
    assert np.allclose(logits, net.forward(x).reshape(-1))
    for _ in range(3):
        d = rng.normal(size=net.input_size)
        fd = C @ (net.forward(x + h * d).reshape(-1) - net.forward(x - h * d).reshape(-1))
        assert np.allclose(grads @ d, fd / (2 * h), rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["conv", "dense"]))
def test_gradients_of_random_dags_match_finite_differences(seed, kind):
    rng = np.random.default_rng(seed)
    net = _random_dag(rng, kind)  # residual Add, Concat, ReLU/LeakyReLU, max or average pool
    _check_against_differences(net, rng.uniform(size=net.input_size), rng)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh"])
def test_gradients_of_a_padded_cnn_match_finite_differences(act):
    rng = np.random.default_rng(3)
    net = from_onnx_model(onnx_builders.cnn(rng, act, pads=(1, 2, 2, 1)))
    _check_against_differences(net, rng.uniform(size=net.input_size), rng)


def test_gradients_of_the_shipped_resnet_match_finite_differences():
    net = load_onnx(MODELS / "refnets" / "resnet2b.onnx")
    x = np.load(MODELS / "refnets" / "test_20.npz")["x"][0].reshape(-1) / 255.0
    _check_against_differences(net, x, np.random.default_rng(0), h=1e-5)


def test_linear_radius_of_a_linear_network_is_its_exact_radius():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    net = Network((Dense(W, b),), (6,), 4)
    x = rng.uniform(size=6)
    label = net.predict(x)
    r = linear_radius(net, x, label)
    y = W @ x + b
    expect = min((y[label] - y[j]) / np.abs(W[label] - W[j]).sum() for j in range(4) if j != label)
    assert r == pytest.approx(expect)
    # the worst corner of the box at r puts the closest margin at zero
    j = min((j for j in range(4) if j != label),
            key=lambda j: (y[label] - y[j]) / np.abs(W[label] - W[j]).sum())
    z = x - r * np.sign(W[label] - W[j])
    assert (W @ z + b)[label] - (W @ z + b)[j] == pytest.approx(0.0, abs=1e-9)


def test_activation_depth_counts_the_longest_path():
    assert activation_depth(load_onnx(MODELS / "fnn-3x30-relu.onnx")) == 3
    assert activation_depth(load_onnx(MODELS / "cnn-6-16-128-relu.onnx")) == 3
    # stem, two blocks of two, the head's hidden layer
    assert activation_depth(load_onnx(MODELS / "refnets" / "resnet2b.onnx")) == 6


def test_every_layer_kind_has_a_vector_jacobian_product():
    assert set(VJPS) == set(get_args(Layer))
