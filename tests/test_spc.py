"""SPC: X-bar/R chart values, Cp/Cpk and the Western Electric rules, against values computed here by hand
(fractions, no shortcuts through domain/spc.py) and a textbook example.

Control chart constants (n: A2, D3, D4, d2) as published in the table of control chart constants (e.g.
Montgomery, Introduction to Statistical Quality Control, Appendix VI; yadavgaurav.com/table-control-chart-
constants); typed here again on purpose, so a wrong constant in the module fails the test.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from core.errors import InvalidInput
from domain import spc

PUBLISHED = {2: ("1.880", "0", "3.267", "1.128"), 3: ("1.023", "0", "2.574", "1.693"),
             4: ("0.729", "0", "2.282", "2.059"), 5: ("0.577", "0", "2.114", "2.326"),
             6: ("0.483", "0", "2.004", "2.534"), 7: ("0.419", "0.076", "1.924", "2.704"),
             8: ("0.373", "0.136", "1.864", "2.847"), 9: ("0.337", "0.184", "1.816", "2.970"),
             10: ("0.308", "0.223", "1.777", "3.078")}


def test_constants_are_the_published_ones():
    assert set(spc.CONSTANTS) == set(PUBLISHED)
    for n, row in PUBLISHED.items():
        assert spc.CONSTANTS[n] == tuple(float(x) for x in row), n


def test_piston_ring_example():
    """Montgomery, Example 6.1 (piston ring inside diameter, 25 samples of 5): x-double-bar 74.001,
    R-bar 0.023, so the X-bar chart has UCL 74.014 and LCL 73.988, the R chart UCL 0.049 and LCL 0; with
    specifications 74.000 +/- 0.05 mm, sigma = R-bar/d2 = 0.0099 and Cp = 1.68. The 25 samples here are
    built to have exactly that x-double-bar and R-bar."""
    values: list[float] = []
    for i in range(25):
        centre = 74.001 + (0.003 if i % 2 else -0.003) * (i < 24)  # 12 pairs +/- 0.003, the last one at 74.001
        values += [centre - 0.0115, centre + 0.0115, centre, centre + 0.002, centre - 0.002]
    chart = spc.xbar_r(values, 5)
    assert len(chart.means) == 25 and chart.dropped == 0
    assert round(chart.grand_mean, 3) == 74.001 and round(chart.r_bar, 3) == 0.023
    assert round(chart.xbar_ucl, 3) == 74.014 and round(chart.xbar_lcl, 3) == 73.988
    assert round(chart.r_ucl, 3) == 0.049 and chart.r_lcl == 0
    cap = spc.capability(chart, 73.95, 74.05)
    assert round(chart.sigma, 4) == 0.0099
    # the book's 1.68 divides by sigma rounded to 0.0099; unrounded, Cp = 0.10 / (6 * 0.023 / 2.326) = 1.686
    assert round(0.10 / (6 * round(chart.sigma, 4)), 2) == 1.68
    assert cap.cp == pytest.approx(0.10 / (6 * 0.023 / 2.326), rel=1e-9)
    # off-centre by 0.001: Cpk is the upper side, (74.05 - 74.001) / (3 * 0.023 / 2.326)
    assert round(cap.cpk, 3) == round(0.049 / (3 * 0.023 / 2.326), 3) == 1.652 and cap.cpk == cap.cpu


@pytest.mark.parametrize("n", sorted(PUBLISHED))
def test_chart_values_computed_independently(n):
    rng = random.Random(n)
    values = [round(rng.gauss(25.0, 0.02), 4) for _ in range(n * 20 + n - 1)]  # n - 1 values too many
    chart = spc.xbar_r(values, n)
    a2, d3, d4, d2 = (Fraction(x) for x in PUBLISHED[n])
    exact = [Fraction(str(v)) for v in values][n - 1:]  # the oldest incomplete group is left out
    groups = [exact[i:i + n] for i in range(0, len(exact), n)]
    means = [sum(g) / n for g in groups]
    ranges = [max(g) - min(g) for g in groups]
    grand, r_bar = sum(means) / len(means), sum(ranges) / len(ranges)
    assert chart.dropped == n - 1 and len(chart.means) == 20
    assert chart.means == pytest.approx([float(m) for m in means], abs=1e-12)
    assert chart.ranges == pytest.approx([float(r) for r in ranges], abs=1e-12)
    for got, want in [(chart.grand_mean, grand), (chart.r_bar, r_bar), (chart.xbar_ucl, grand + a2 * r_bar),
                      (chart.xbar_lcl, grand - a2 * r_bar), (chart.r_ucl, d4 * r_bar), (chart.r_lcl, d3 * r_bar),
                      (chart.sigma, r_bar / d2), (chart.sigma_xbar, a2 * r_bar / 3)]:
        assert got == pytest.approx(float(want), rel=1e-12, abs=1e-12)
    lsl, usl = Fraction("24.94"), Fraction("25.08")
    cap = spc.capability(chart, float(lsl), float(usl))
    sigma = r_bar / d2
    assert cap.cp == pytest.approx(float((usl - lsl) / (6 * sigma)), rel=1e-9)
    assert cap.cpk == pytest.approx(float(min(usl - grand, grand - lsl) / (3 * sigma)), rel=1e-9)


def test_one_sided_specification_has_cpk_but_no_cp():
    chart = spc.xbar_r([10.0, 10.2, 10.1, 9.9, 10.0, 10.3], 3)
    upper_only = spc.capability(chart, None, 11.0)
    assert upper_only.cp is None and upper_only.cpl is None and upper_only.cpk == upper_only.cpu
    assert upper_only.cpu == pytest.approx((11.0 - chart.grand_mean) / (3 * chart.sigma))
    lower_only = spc.capability(chart, 9.5, None)
    assert lower_only.cp is None and lower_only.cpk == lower_only.cpl
    with pytest.raises(InvalidInput):
        spc.capability(chart, None, None)


def test_too_few_values_and_unsupported_subgroups_are_refused():
    with pytest.raises(InvalidInput, match="1 subgroup"):
        spc.xbar_r([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 5)
    with pytest.raises(InvalidInput, match="2 to 10"):
        spc.xbar_r([1.0] * 40, 11)
    with pytest.raises(InvalidInput, match="finite"):
        spc.xbar_r([1.0, float("nan"), 2.0, 3.0], 2)


# --- Western Electric rules (centre 0, sigma 1: the points are in sigma units) ------------------------------

def rules(points: list[float]) -> list[tuple[int, int, str]]:
    return [(v.rule, v.index, v.side) for v in spc.western_electric(points, 0.0, 1.0)]


def test_rule_1_a_point_beyond_3_sigma():
    assert rules([0.5, 3.2, -0.2, -3.1]) == [(1, 1, "above"), (1, 3, "below")]
    assert rules([3.0, -3.0]) == []  # on the limit is not beyond it


def test_rule_2_two_of_three_beyond_2_sigma_on_one_side():
    assert rules([0.1, 2.5, 0.3, 2.1]) == [(2, 3, "above")]
    assert rules([2.5, 2.6]) == [(2, 1, "above")]  # 2 of the first 2 points
    assert rules([2.5, -2.5, 0.1]) == []  # opposite sides
    assert rules([2.5, 0.1, 0.2, 2.5]) == []  # 2 of 4, not of 3
    assert rules([-2.2, -0.5, -2.9]) == [(2, 2, "below")]


def test_rule_3_four_of_five_beyond_1_sigma_on_one_side():
    assert rules([1.5, 1.2, 0.3, 1.1, 1.4]) == [(3, 4, "above")]
    assert rules([1.5, 1.2, 0.3, 0.9, 1.4]) == []  # only 3 of 5
    assert rules([-1.5, -1.2, -1.1, -1.3]) == [(3, 3, "below")]
    assert rules([1.5, -1.2, -1.3, 1.1, 1.4]) == []  # 3 above and 2 below: not 4 on one side


def test_rule_4_eight_in_a_row_on_one_side():
    assert rules([0.2] * 7) == []
    assert rules([0.2] * 9) == [(4, 7, "above"), (4, 8, "above")]
    assert rules([-0.1] * 4 + [0.0] + [-0.1] * 4) == []  # a point on the centre line breaks the run
    assert rules([0.5, -0.1, -0.2, -0.3, -0.1, -0.4, -0.2, -0.1, -0.3]) == [(4, 8, "below")]


def test_one_point_can_break_several_rules_and_patterns_report_their_points():
    found = spc.western_electric([0.5, 1.2, 2.4, 1.5, 3.4], 0.0, 1.0)
    assert [(v.rule, v.index) for v in found] == [(1, 4), (2, 4), (3, 4)]
    rule2 = next(v for v in found if v.rule == 2)
    assert rule2.points == [2, 4] and rule2.description.startswith("2 of 3")


def test_rules_scale_with_the_chart():
    # the same pattern around centre 25 with sigma 0.01
    points = [25 + 0.01 * z for z in [0.1, 2.5, 0.3, 2.1, 3.5]]
    assert [(v.rule, v.index) for v in spc.western_electric(points, 25.0, 0.01)] == [(2, 3), (1, 4), (2, 4)]
