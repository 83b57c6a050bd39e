"""VNN-LIB parsing: boxes, disjunctive normal form, exact-or-outward rounding, clear errors."""

from fractions import Fraction

import numpy as np
import pytest

from verifier.vnnlib.parser import VnnlibError, parse

HEAD = """; a comment
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5)) (assert (>= X_0 -0.25))
(assert (and (>= X_1 0.1) (<= X_1 0.3)))
"""


def test_box_and_disjunction_of_conjunctions():
    spec = parse(HEAD + "(assert (or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0) (< Y_2 3))))")
    assert (spec.n_inputs, spec.n_outputs, len(spec.disjuncts)) == (2, 3, 2)
    a, b = spec.disjuncts
    assert a.lower[0] == -0.25 and a.upper[0] == 0.5
    # Y_1 >= Y_0 is unsafe: Y_0 - Y_1 <= 0
    np.testing.assert_array_equal(a.C, [[1, -1, 0]])
    assert a.d.tolist() == [0.0] and a.strict.tolist() == [False]
    np.testing.assert_array_equal(b.C, [[1, 0, -1], [0, 0, 1]])
    assert b.d[1] <= -3 and b.strict.tolist() == [False, True]


def test_decimal_bounds_round_outward_and_constants_down():
    spec = parse(HEAD + "(assert (<= Y_0 (+ Y_1 0.1)))")
    dj = spec.disjuncts[0]
    assert Fraction(dj.lower[1]) <= Fraction("0.1") and Fraction(dj.upper[1]) >= Fraction("0.3")
    assert Fraction(float(dj.d[0])) <= Fraction("-0.1")


def test_terms_products_and_equalities():
    spec = parse(HEAD + "(assert (and (>= (* 2 Y_0) (- Y_1 (* -1 Y_2))) (= Y_2 1)))")
    dj = spec.disjuncts[0]
    np.testing.assert_array_equal(dj.C, [[-2, 1, 1], [0, 0, 1], [0, 0, -1]])
    assert dj.d.tolist() == [0.0, -1.0, 1.0]


def test_or_inside_and_is_distributed():
    text = HEAD + "(assert (or (>= Y_0 Y_1) (>= Y_0 Y_2)))\n(assert (or (<= Y_2 1) (<= Y_1 1)))"
    assert len(parse(text).disjuncts) == 4


def test_input_bounds_inside_disjuncts():
    text = HEAD.replace("(assert (<= X_0 0.5)) (assert (>= X_0 -0.25))", "") + (
        "(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 Y_1)) (and (>= X_0 2) (<= X_0 3) "
        "(>= Y_0 Y_2))))")
    a, b = parse(text).disjuncts
    assert (a.lower[0], a.upper[0], b.lower[0], b.upper[0]) == (0, 1, 2, 3)


@pytest.mark.parametrize("text,match", [
    ("(assert (<= Z_0 1))", "undeclared variable 'Z_0'"),
    ("(assert (<= (* Y_0 Y_1) 1))", "non-linear"),
    ("(assert (<= X_0 Y_1))", "mixes"),
    ("(assert (<= Y_0 1)", "unbalanced"),
    ("(check-sat)", "unsupported command"),
    ("(assert (<= (* 0.1 Y_0) 1))", "not exact"),
    ("(assert (not (<= Y_0 1)))", "unsupported formula"),
])
def test_errors_say_what_is_wrong(text, match):
    with pytest.raises(VnnlibError, match=match):
        parse(HEAD + text)


def test_every_input_needs_both_bounds():
    with pytest.raises(VnnlibError, match="X_1 has no lower or upper bound"):
        parse(HEAD.replace("(assert (and (>= X_1 0.1) (<= X_1 0.3)))", "(assert (<= X_1 1))")
              + "(assert (<= Y_0 Y_1))")


def test_declarations_must_be_contiguous():
    with pytest.raises(VnnlibError, match="X_0 .. X_n-1"):
        parse("(declare-const X_1 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))")
