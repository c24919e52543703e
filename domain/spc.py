"""Statistical process control: X-bar/R charts, process capability and the Western Electric rules. Pure.

Sigma is estimated within subgroups, from the average range: sigma = R-bar / d2. It is the short-term
(within-subgroup) sigma that X-bar/R limits use, so Cp and Cpk here are the "potential" capability indices
of the charted window (not Pp/Ppk, which would use the overall standard deviation).

Control chart constants for subgroup sizes 2..10: A2, D3, D4 and d2 as tabulated in SPC texts (e.g.
Montgomery, Introduction to Statistical Quality Control, Appendix VI); checked against
yadavgaurav.com/table-control-chart-constants and a control-chart software manual's constant table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import isfinite

from core.errors import InvalidInput

# n: (A2, D3, D4, d2)
CONSTANTS: dict[int, tuple[float, float, float, float]] = {
    2: (1.880, 0.0, 3.267, 1.128),
    3: (1.023, 0.0, 2.574, 1.693),
    4: (0.729, 0.0, 2.282, 2.059),
    5: (0.577, 0.0, 2.114, 2.326),
    6: (0.483, 0.0, 2.004, 2.534),
    7: (0.419, 0.076, 1.924, 2.704),
    8: (0.373, 0.136, 1.864, 2.847),
    9: (0.337, 0.184, 1.816, 2.970),
    10: (0.308, 0.223, 1.777, 3.078),
}

RULES = {
    1: "one point beyond 3 sigma",
    2: "2 of 3 consecutive points beyond 2 sigma on the same side",
    3: "4 of 5 consecutive points beyond 1 sigma on the same side",
    4: "8 consecutive points on the same side of the centre line",
}


@dataclass(frozen=True)
class XbarR:
    subgroup_size: int
    means: list[float]
    ranges: list[float]
    grand_mean: float  # centre line of the X-bar chart
    r_bar: float  # centre line of the R chart
    xbar_ucl: float
    xbar_lcl: float
    r_ucl: float
    r_lcl: float
    sigma: float  # within-subgroup sigma, R-bar / d2
    sigma_xbar: float  # sigma of a subgroup mean: (UCL - centre) / 3 = A2 * R-bar / 3
    dropped: int  # oldest values left out so that the subgroups end with the newest value


@dataclass(frozen=True)
class Capability:
    lower: float | None
    upper: float | None
    cp: float | None  # (USL - LSL) / 6 sigma; None with a one-sided specification
    cpk: float | None  # min(CPU, CPL)
    cpu: float | None  # (USL - mean) / 3 sigma
    cpl: float | None  # (mean - LSL) / 3 sigma
    sigma: float
    mean: float
    method: str = "sigma = R-bar / d2 (within subgroups)"


@dataclass(frozen=True)
class Violation:
    rule: int
    index: int  # 0-based position of the subgroup that completes the pattern
    side: str  # above | below
    points: list[int] = field(default_factory=list)  # the subgroups that make up the pattern

    @property
    def description(self) -> str:
        return RULES[self.rule]


def xbar_r(values: list[float], subgroup_size: int) -> XbarR:
    """X-bar and R chart values of consecutive subgroups, oldest first.

    The values are in time order; they are cut into subgroups of `subgroup_size` ending with the newest value,
    so an incomplete group is the oldest values, which are left out (`dropped`)."""
    if subgroup_size not in CONSTANTS:
        raise InvalidInput(f"subgroup: {subgroup_size} is not a subgroup size of the X-bar/R constants; "
                           f"use 2 to 10", field="subgroup")
    bad = [i for i, v in enumerate(values) if not isfinite(v)]
    if bad:
        raise InvalidInput(f"values: value {bad[0] + 1} is not a finite number", field="values")
    k = len(values) // subgroup_size
    if k < 2:
        raise InvalidInput(f"subgroup: {len(values)} value(s) make {k} subgroup(s) of {subgroup_size}; "
                           "control limits need at least 2 (20 to 25 for limits to rely on)", field="subgroup")
    dropped = len(values) - k * subgroup_size
    used = values[dropped:]
    groups = [used[i * subgroup_size:(i + 1) * subgroup_size] for i in range(k)]
    means = [sum(g) / subgroup_size for g in groups]
    ranges = [max(g) - min(g) for g in groups]
    grand = sum(means) / k
    r_bar = sum(ranges) / k
    a2, d3, d4, d2 = CONSTANTS[subgroup_size]
    return XbarR(subgroup_size=subgroup_size, means=means, ranges=ranges, grand_mean=grand, r_bar=r_bar,
                 xbar_ucl=grand + a2 * r_bar, xbar_lcl=grand - a2 * r_bar, r_ucl=d4 * r_bar, r_lcl=d3 * r_bar,
                 sigma=r_bar / d2, sigma_xbar=a2 * r_bar / 3, dropped=dropped)


def capability(chart: XbarR, lower: float | None, upper: float | None) -> Capability:
    """Cp and Cpk of the charted window against the specification limits (either may be missing)."""
    if lower is None and upper is None:
        raise InvalidInput("the characteristic has no specification limit: Cp and Cpk need at least one",
                           field="characteristic")
    if lower is not None and upper is not None and lower > upper:
        raise InvalidInput(f"lower limit {lower} is above upper limit {upper}", field="characteristic")
    s, mean = chart.sigma, chart.grand_mean
    if s == 0:  # every subgroup without spread: capability is not defined
        return Capability(lower, upper, None, None, None, None, s, mean)
    cpu = (upper - mean) / (3 * s) if upper is not None else None
    cpl = (mean - lower) / (3 * s) if lower is not None else None
    cp = (upper - lower) / (6 * s) if upper is not None and lower is not None else None
    sides = [c for c in (cpu, cpl) if c is not None]
    return Capability(lower, upper, cp, min(sides), cpu, cpl, s, mean)


def western_electric(points: list[float], centre: float, sigma: float) -> list[Violation]:
    """The Western Electric rules on a chart's points (here subgroup means), each violation at the point that
    completes its pattern. A point exactly on a zone boundary is not beyond it; a point on the centre line
    is on neither side."""
    out: list[Violation] = []
    if sigma <= 0:
        return out
    z = [(p - centre) / sigma for p in points]
    for i, zi in enumerate(z):
        if abs(zi) > 3:
            out.append(Violation(1, i, _side(zi), [i]))
        for rule, beyond, of, need in ((2, 2.0, 3, 2), (3, 1.0, 5, 4)):
            if abs(zi) <= beyond:
                continue  # the point itself must be one of the pattern's points
            side = 1 if zi > 0 else -1
            window = range(max(0, i - of + 1), i + 1)  # "2 of 3 or fewer": the first points count too
            hits = [j for j in window if z[j] * side > beyond]
            if len(hits) >= need:
                out.append(Violation(rule, i, _side(zi), hits))
        if i >= 7:
            run = z[i - 7:i + 1]
            if all(v > 0 for v in run) or all(v < 0 for v in run):
                out.append(Violation(4, i, _side(zi), list(range(i - 7, i + 1))))
    return sorted(out, key=lambda v: (v.index, v.rule))


def range_violations(chart: XbarR) -> list[int]:
    """Subgroups whose range is outside the R chart's limits."""
    return [i for i, r in enumerate(chart.ranges) if r > chart.r_ucl or r < chart.r_lcl]


def _side(z: float) -> str:
    return "above" if z > 0 else "below"
