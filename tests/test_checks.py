"""The shared number checks (hassod/_checks.py) that config, predict and the JSON readers use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hassod._checks import check_number, is_finite_number, real_number


@pytest.mark.parametrize("value", [0, 1, -3, 0.5, 1e300, 10**300])
def test_finite_numbers(value):
    assert is_finite_number(value)


@pytest.mark.parametrize(
    "value", [True, False, "1", None, [1], float("nan"), float("inf"), -math.inf, 10**400]
)
def test_not_finite_numbers(value):
    assert not is_finite_number(value)


@pytest.mark.parametrize(
    ("value", "options", "error", "message"),
    [
        (True, {}, TypeError, "x must be a number, got True"),
        ("0.5", {}, TypeError, "x must be a number, got '0.5'"),
        (np.float32(0.5), {}, TypeError, "x must be a number"),
        (1.0, {"integer": True}, TypeError, "x must be an integer, got 1.0"),
        (float("nan"), {"low": 0}, ValueError, "x must be a finite number, got nan"),
        (0, {"low": 0, "low_open": True}, ValueError, "x must be > 0, got 0"),
        (-1, {"low": 0}, ValueError, "x must be >= 0, got -1"),
        (2, {"high": 1}, ValueError, "x must be <= 1, got 2"),
        (1, {"high": 1, "high_open": True}, ValueError, "x must be < 1, got 1"),
        (1.5, {"low": 0, "high": 1}, ValueError, r"x must be in \[0, 1\], got 1.5"),
        (0, {"low": 0, "high": 1, "low_open": True}, ValueError, r"x must be in \(0, 1\]"),
    ],
)
def test_check_number_refuses(value, options, error, message):
    with pytest.raises(error, match=message):
        check_number("x", value, **options)


@pytest.mark.parametrize(
    ("value", "options"),
    [(0, {"low": 0}), (1, {"high": 1}), (0.5, {"low": 0, "high": 1, "low_open": True}), (7, {})],
)
def test_check_number_accepts_the_limits_it_includes(value, options):
    check_number("x", value, **options)
    check_number("x", value, integer=isinstance(value, int), **options)


def test_real_number_widens_numpy_scalars_but_not_strings_or_bools():
    assert real_number(np.float32(0.25), "t", "a number") == 0.25
    for value in ("0.4", True, np.bool_(True)):
        with pytest.raises(ValueError, match="t must be a number"):
            real_number(value, "t", "a number")
