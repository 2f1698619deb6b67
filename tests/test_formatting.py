"""The number formatters: one rule for a missing number (None or NaN), shown as "-"."""

from __future__ import annotations

import math

import pytest

from cnnlab.views.formatting import loss, percent, seconds


@pytest.mark.parametrize(("formatter", "value", "text"), [
    (percent, 0.9312, "93.12%"), (percent, 1, "100.00%"), (loss, 0.234567, "0.2346"), (loss, 2, "2.0000"),
    (seconds, 12.34, "12.3 s"), (seconds, 0, "0.0 s"),
])
def test_numbers(formatter, value, text):
    assert formatter(value) == text


@pytest.mark.parametrize("formatter", [percent, loss, seconds])
def test_none_and_nan_are_a_dash(formatter):
    assert formatter(None) == formatter(math.nan) == formatter(float("nan")) == "-"
