"""The one text form of numbers and intervals (harness/report/format.py), every case written out by hand."""

import math

import numpy as np

from harness.report.format import interval, number
from harness.result import Interval

INF, NAN = math.inf, math.nan


def test_number():
    assert number(0.12345) == "0.123"
    assert number(0.12345, 2) == "0.12"
    assert number(-0.5, 2, sign=True) == "-0.50" and number(0.5, 2, sign=True) == "+0.50"
    assert number(np.float32(0.25), 2) == "0.25"          # numpy scalars are numbers too
    assert number(None) == number(NAN) == number("x") == "n/a"


def test_interval():
    assert interval(Interval(0.14, 0.04, 0.25), 2) == "0.14 [0.04, 0.25]"
    assert interval(Interval(-0.5, -0.87, -0.12), 3, sign=True, unit="nats") == "-0.500 nats [-0.870, -0.120]"
    # An interval without finite bounds never reads as if it had a CI, and says which case it is.
    assert interval(Interval(0.0, -INF, INF, "CI unbounded: denominator not significant"), 3) == "0.000 (unbounded)"
    assert interval(Interval(0.3, NAN, NAN, "one test context"), 2) == "0.30 (no CI)"
    assert interval(Interval(NAN, NAN, NAN, "no test context"), 2) == "n/a (undefined)"
    assert interval(Interval(NAN, NAN, NAN), 2) == "n/a"
    assert interval(None) == "n/a"
