"""Tests of nst_det/research/measure.py: the peak-memory figure the benchmarks print is the rise
of the resident set that the measured function causes, not a number that merely is >= 0."""
import math

import pytest
import torch

from nst_det.research.measure import seconds_and_peak_mib

CPU = torch.device("cpu")


def test_peak_is_the_memory_the_function_touches():
    def touch_64_mib():
        x = torch.empty(64 * 2**20 // 4, dtype=torch.float32)
        x.fill_(1.0)  # touch every page
        return float(x[-1])

    took, peak = seconds_and_peak_mib(touch_64_mib, CPU)
    if math.isnan(peak):
        pytest.skip("this kernel offers no /proc/self/clear_refs to reset the high-water mark")
    assert took > 0
    assert 60 <= peak <= 96, peak


def test_a_function_that_allocates_nothing_has_no_peak():
    _, peak = seconds_and_peak_mib(lambda: sum(range(1000)), CPU)
    if math.isnan(peak):
        pytest.skip("this kernel offers no /proc/self/clear_refs to reset the high-water mark")
    assert 0 <= peak < 4, peak
