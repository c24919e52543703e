"""ISO 2859-1 (= ANSI/ASQ Z1.4, MIL-STD-105E) single sampling: the tables against published values, arrows,
the switching rules as a state machine, and the sampling API with the switching state per supplier and item.

Where the expected values come from (the same sources are named in domain/sampling.py):
[AQL]  "ANSI/ASQC Z1.4/MIL-STD-105E/BS 6001/DIN 40080/ISO 2859" AQL chart, Table I
       (pdfcoffee.com/aql-sampling-chart-pdf-free.html; scribd.com/document/339359187/AQL-Sampling-Chart);
       wisetool.com/sampling.htm Table 1.
[105E] MIL-STD-105E Table II-A as listed row by row in "MIL-STD-105E legible copy"
       (scribd.com/document/563507790/Tablas): the plans of each code letter, left to right.
[NIBS] nibs.org/FMOC/DPW_AC/AC-TABLE.ASC: Table 1-A "Single Normal" (from MIL-STD-105E Table II-A) and
       Table 1-B "Single Tightened" (Table II-B), AQL 0.65..15, rejection numbers and arrows.
[WEB]  ttsqc.com/blog/understanding-aql-tables.html and tradeaiders.com (defect-rate-vs-acceptance-number):
       lot 5,000 at level II is code L, n = 200; AQL 2.5 -> Ac 10 Re 11; AQL 4.0 -> Ac 14.
[LAW]  J. Lawson's AQLSchemes (R), MIL-STD-105E / Z1.4 single plans "from the published tables": the only
       source found for the tightened row S (n = 3150).
[LAWC] the same package's resolved matrices for reduced inspection, ANSI/ASQ Z1.4 Table II-C (= MIL-STD-105E),
       as in github.com/fjgonzalezmgt/AQLSchemesCust, R/AAZ14Single.R: `ANSIASQSingleReducedss` (sample sizes,
       26 values per code letter A..R, AQL 0.010..1000) and `ANSIASQSingleReducedac` / `...Reducedre` (one
       column of 16 code letters per AQL). Transcribed below by hand in the R file's own shape. No second
       readable copy of Table II-C was found, so the spot checks below are [LAWC] cells too, reached through
       Table 1. ISO 2859-1:1999 Table 2-C (no gap between Ac and Re) is a different table, not in TraceHub.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.errors import Conflict, InvalidInput
from domain import sampling
from domain.sampling import AQLS, LotOutcome, SwitchingState, code_letter, plan
from tests.helpers import role_headers

# --- Table 1 -----------------------------------------------------------------------------------------------

# [AQL] Table I, rows as printed: lot size range -> S-1 S-2 S-3 S-4 I II III
TABLE_I_PUBLISHED = [
    ((2, 8), "A A A A A A B"), ((9, 15), "A A A A A B C"), ((16, 25), "A A B B B C D"),
    ((26, 50), "A B B C C D E"), ((51, 90), "B B C C C E F"), ((91, 150), "B B C D D F G"),
    ((151, 280), "B C D E E G H"), ((281, 500), "B C D E F H J"), ((501, 1200), "C C E F G J K"),
    ((1201, 3200), "C D E G H K L"), ((3201, 10000), "C D F G J L M"), ((10001, 35000), "C D F H K M N"),
    ((35001, 150000), "D E G J L N P"), ((150001, 500000), "D E G J M P Q"), ((500001, 10**9), "D E H K N Q R"),
]


@pytest.mark.parametrize(("rng", "letters"), TABLE_I_PUBLISHED)
def test_table_1_code_letters_at_both_ends_of_every_lot_size_row(rng, letters):
    for lot_size in rng:
        got = " ".join(code_letter(lot_size, level) for level in sampling.LEVELS)
        assert got == letters, (lot_size, got)


def test_the_brief_examples():
    p = plan(1000, "II", 1.0)
    assert (p.code_letter, p.n, p.ac, p.re) == ("J", 80, 2, 3)
    p = plan(1000, "II", 2.5)  # [NIBS] J at 2.5: Re 6
    assert (p.code_letter, p.n, p.ac, p.re) == ("J", 80, 5, 6)


@pytest.mark.parametrize(("aql", "ac", "re"), [(2.5, 10, 11), (4.0, 14, 15)])
def test_lot_5000_level_ii_published_plans(aql, ac, re):
    p = plan(5000, "II", aql)  # [WEB]
    assert (p.code_letter, p.n, p.ac, p.re) == ("L", 200, ac, re)


# --- Tables 2-A and 2-B against the published tables ---------------------------------------------------------

# [105E] the plans of each row of Table II-A, left to right (arrows left out)
SEQ = ["0/1", "1/2", "2/3", "3/4", "5/6", "7/8", "10/11", "14/15", "21/22"]
ROWS_105E = {"A": SEQ + ["30/31"], **{L: SEQ + ["30/31", "44/45"] for L in "BCDE"},
             **{L: SEQ for L in "FGHJKLMNPQ"}, "R": SEQ[1:]}


def test_table_2a_rows_hold_the_published_plans_in_order():
    for letter, expected in ROWS_105E.items():
        plans = [c for c in sampling.TABLE_2A[letter].split() if "/" in c]
        assert plans == expected, letter


# [NIBS] rejection numbers ("\/" below, "/\" above, "||" arrow shaft) for AQL 0.65 1.0 1.5 2.5 4.0 6.5 10 15
NIBS_NORMAL = """
A || || || || \\/ 1 /\\ \\/
B || || || \\/ 1 /\\ \\/ 2
C || || \\/ 1 /\\ \\/ 2 3
D || \\/ 1 /\\ \\/ 2 3 4
E \\/ 1 /\\ \\/ 2 3 4 6
F 1 /\\ \\/ 2 3 4 6 8
G /\\ \\/ 2 3 4 6 8 11
H \\/ 2 3 4 6 8 11 15
J 2 3 4 6 8 11 15 22
K 3 4 6 8 11 15 22 /\\
L 4 6 8 11 15 22 /\\ ||
M 6 8 11 15 22 /\\ || ||
N 8 11 15 22 /\\ || || ||
P 11 15 22 /\\ || || || ||
Q 15 22 /\\ || || || || ||
"""
NIBS_TIGHTENED = """
A || || || || || \\/ || ||
B || || || || \\/ 1 || \\/
C || || || \\/ 1 || \\/ 2
D || || \\/ 1 || \\/ 2 3
E || \\/ 1 || \\/ 2 3 4
F \\/ 1 || \\/ 2 3 4 6
G 1 || \\/ 2 3 4 6 9
H || \\/ 2 3 4 6 9 13
J \\/ 2 3 4 6 9 13 19
K 2 3 4 6 9 13 19 /\\
"""


def _compare_with_nibs(text: str, table: dict[str, str]) -> list[str]:
    wrong = []
    first = AQLS.index("0.65")
    for line in text.strip().splitlines():
        letter, *cells = line.split()
        row = table[letter].split()
        for k, published in enumerate(cells):
            ours = row[first + k]
            ok = ((published == "\\/" and ours == "v") or (published == "/\\" and ours == "^")
                  or (published == "||" and ours in ("v", "^"))
                  or (published.isdigit() and "/" in ours and ours.split("/")[1] == published))
            if not ok:
                wrong.append(f"{letter} AQL {AQLS[first + k]}: published {published}, ours {ours}")
    return wrong


def test_table_2a_matches_the_nibs_rendering_cell_by_cell():
    # the one difference: NIBS prints an up arrow in the first row, where no plan is above it; the table
    # (and AQLSchemes' resolved matrix) use the plan below it
    assert _compare_with_nibs(NIBS_NORMAL, sampling.TABLE_2A) == ["A AQL 10: published /\\, ours v"]


def test_table_2b_matches_the_nibs_rendering_cell_by_cell():
    assert _compare_with_nibs(NIBS_TIGHTENED, sampling.TABLE_2B) == []


@pytest.mark.parametrize(("lot_size", "level", "aql", "severity", "expected"), [
    # normal [105E rows]: the ends of the rows
    (5, "I", 1000, "normal", ("A", "A", 2, 30, 31)),
    (10, "II", 1000, "normal", ("B", "B", 3, 44, 45)),
    (20, "II", 650, "normal", ("C", "C", 5, 44, 45)),
    (60, "II", 250, "normal", ("E", "E", 13, 44, 45)),
    (60, "I", 250, "normal", ("C", "C", 5, 21, 22)),
    # tightened [NIBS] (Table 1-B is printed for level III)
    (3000, "III", 10, "tightened", ("L", "K", 125, 18, 19)),  # L at 10 is an up arrow: K's plan
    (2000, "II", 10, "tightened", ("K", "K", 125, 18, 19)),
    (1000, "II", 1.0, "tightened", ("J", "J", 80, 1, 2)),
    (120, "II", 1.0, "tightened", ("F", "F", 20, 0, 1)),
    # [LAW] the only plan of row S of Table II-B
    (600000, "III", 0.025, "tightened", ("R", "S", 3150, 1, 2)),
])
def test_published_plans(lot_size, level, aql, severity, expected):
    p = plan(lot_size, level, aql, severity)
    assert (p.code_letter, p.plan_letter, p.n, p.ac, p.re) == expected


@pytest.mark.parametrize(("lot_size", "aql", "severity", "expected"), [
    # arrow down: the first plan below, with its larger sample   [NIBS column by column]
    (60, 0.65, "normal", ("E", "F", 20, 0, 1)),      # E .65 "\/", F .65 "1"
    (300, 0.65, "normal", ("H", "J", 80, 1, 2)),     # H .65 "\/", J .65 "2"
    (5, 0.65, "normal", ("A", "F", 20, 0, 1)),       # A..D "||", E "\/": five rows down; 20 > lot of 5
    (1000, 0.65, "tightened", ("J", "K", 125, 1, 2)),  # J .65 "\/", K .65 "2"
    (200, 1.0, "tightened", ("G", "J", 80, 1, 2)),   # G 1.0 "||", H 1.0 "\/", J 1.0 "2": two rows down
    (5, 6.5, "tightened", ("A", "B", 3, 0, 1)),      # A 6.5 "\/", B 6.5 "1"
    # arrow up: the first plan above, with its smaller sample
    (200, 0.65, "normal", ("G", "F", 20, 0, 1)),     # G .65 "/\", F .65 "1"
    (10, 6.5, "normal", ("B", "A", 2, 0, 1)),        # B 6.5 "/\", A 6.5 "1"
    (2000, 15, "normal", ("K", "J", 80, 21, 22)),    # K 15 "/\", J 15 "22"
    (5000, 10, "normal", ("L", "K", 125, 21, 22)),   # L 10 "/\", K 10 "22"
    (2000, 15, "tightened", ("K", "J", 80, 18, 19)),  # K 15 "/\", J 15 "19"
])
def test_arrows_lead_to_the_first_plan_and_its_sample_size(lot_size, aql, severity, expected):
    p = plan(lot_size, "II", aql, severity)
    assert (p.code_letter, p.plan_letter, p.n, p.ac, p.re) == expected
    assert p.n == sampling.SAMPLE_SIZE[p.plan_letter] != sampling.SAMPLE_SIZE[p.code_letter]


def test_a_sample_as_large_as_the_lot_means_inspecting_every_item():
    p = plan(5, "II", 0.65)  # n = 20 for a lot of 5
    assert p.inspect_all and p.units_to_inspect == 5
    p = plan(1000, "II", 1.0)
    assert not p.inspect_all and p.units_to_inspect == 80


def test_every_cell_of_both_tables_resolves_to_a_single_sampling_plan():
    for severity in ("normal", "tightened"):
        for letter in "ABCDEFGHJKLMNPQR":
            previous_ac = -1
            for aql in AQLS:
                _, ac, re = sampling.resolve(severity, letter, aql)
                assert re == ac + 1, (severity, letter, aql)
                # a larger AQL never asks for fewer nonconforming items to be accepted
                assert ac >= previous_ac, (severity, letter, aql)
                previous_ac = ac


def test_tightened_never_accepts_more_than_normal_from_the_same_sample():
    for letter in "ABCDEFGHJKLMNPQR":
        for aql in AQLS:
            t_letter, t_ac, _ = sampling.resolve("tightened", letter, aql)
            n_letter, n_ac, _ = sampling.resolve("normal", letter, aql)
            if t_letter == n_letter:
                assert t_ac <= n_ac, (letter, aql)


def test_wrong_inputs_name_their_field():
    for call, field in [(lambda: plan(1000, "II", 0.5), "aql"), (lambda: plan(1000, "IV", 1.0), "level"),
                        (lambda: plan(1, "II", 1.0), "lot_size"),
                        (lambda: plan(1000, "II", 1.0, "loose"), "severity")]:
        with pytest.raises(InvalidInput) as e:
            call()
        assert e.value.field == field and e.value.message.startswith(field)
    with pytest.raises(InvalidInput) as e:
        plan(1000, "II", 1.0, "loose")
    assert "normal, tightened or reduced" in e.value.message


# --- Table II-C (reduced inspection) against [LAWC] ------------------------------------------------------------

CODES = "ABCDEFGHJKLMNPQR"


def rep(v: int, k: int) -> list[int]:  # R's rep(v, k)
    return [v] * k


# [LAWC] ANSIASQSingleReducedss: one line per code letter A..R, the sample size at each AQL 0.010..1000
LAWC_N = """
500 315 200 125 80 50 32 20 13 8 5 3 2 2 2 2 2 2 2 2 2 2 2 2 2 2
500 315 200 125 80 50 32 20 13 8 5 3 2 2 2 2 2 2 2 2 2 2 2 2 2 2
500 315 200 125 80 50 32 20 13 8 5 3 2 2 3 2 2 2 2 2 2 2 2 2 2 2
500 315 200 125 80 50 32 20 13 8 5 3 2 5 3 3 3 3 3 3 3 3 3 3 2 2
500 315 200 125 80 50 32 20 13 8 5 3 8 5 5 5 5 5 5 5 5 5 5 3 2 2
500 315 200 125 80 50 32 20 13 8 5 13 8 8 8 8 8 8 8 8 5 5 5 3 2 2
500 315 200 125 80 50 32 20 13 8 20 13 13 13 13 13 13 13 13 8 5 5 5 3 2 2
500 315 200 125 80 50 32 20 13 32 20 20 20 20 20 20 20 20 13 8 5 5 5 3 2 2
500 315 200 125 80 50 32 20 50 32 32 32 32 32 32 32 32 20 13 8 5 5 5 3 2 2
500 315 200 125 80 50 32 80 50 50 50 50 50 50 50 50 32 20 13 8 5 5 5 3 2 2
500 315 200 125 80 50 125 80 80 80 80 80 80 80 80 50 32 20 13 8 5 5 5 3 2 2
500 315 200 125 80 200 125 125 125 125 125 125 125 125 80 50 32 20 13 8 5 5 5 3 2 2
500 315 200 125 315 200 200 200 200 200 200 200 200 125 80 50 32 20 13 8 5 5 5 3 2 2
500 315 200 500 315 315 315 315 315 315 315 315 200 125 80 50 32 20 13 8 5 5 5 3 2 2
500 315 800 500 500 500 500 500 500 500 500 315 200 125 80 50 32 20 13 8 5 5 5 3 2 2
500 315 800 800 800 800 800 800 800 800 500 315 200 125 80 50 32 20 13 8 5 5 5 3 2 2
"""

# [LAWC] ANSIASQSingleReducedac: c1..c26, one per AQL, each the 16 code letters A..R top to bottom
LAWC_AC = [
    rep(0, 16), rep(0, 16), rep(0, 16), rep(0, 15) + [1], rep(0, 14) + [1, 1], rep(0, 13) + [1, 1, 2],
    rep(0, 12) + [1, 1, 2, 3], rep(0, 11) + [1, 1, 2, 3, 5], rep(0, 10) + [1, 1, 2, 3, 5, 7],
    rep(0, 9) + [1, 1, 2, 3, 5, 7, 10], rep(0, 8) + [1, 1, 2, 3, 5, 7, 10, 10],
    rep(0, 7) + [1, 1, 2, 3, 5, 7, 10, 10, 10], rep(0, 6) + [1, 1, 2, 3, 5, 7, 10, 10, 10, 10],
    rep(0, 5) + [1, 1, 2, 3, 5, 7, 10] + rep(10, 4), [0, 0, 0, 0, 1, 1, 2, 3, 5, 7, 10] + rep(10, 5),
    [0, 0, 0, 1, 1, 2, 3, 5, 7, 10] + rep(10, 6), [0, 0, 1, 1, 2, 3, 5, 7, 10] + rep(10, 7),
    [1, 1, 1, 2, 3, 5, 7, 10] + rep(10, 8), [2, 2, 2, 3, 5, 7, 10] + rep(10, 9), [3, 3, 3, 5, 7, 10] + rep(10, 10),
    [5, 5, 5, 7, 10] + rep(10, 11), [7, 7, 7, 10, 14] + rep(14, 11), [10, 10, 10, 14, 21] + rep(21, 11),
    [14, 14, 14, 21] + rep(21, 12), [21, 21, 21] + rep(21, 13), rep(30, 16),
]
# [LAWC] ANSIASQSingleReducedre, the same shape
LAWC_RE = [
    rep(1, 16), rep(1, 16), rep(1, 14) + [2, 2], rep(1, 13) + [2, 2, 3], rep(1, 12) + [2, 2, 3, 4],
    rep(1, 11) + [2, 2, 3, 4, 5], rep(1, 10) + [2, 2, 3, 4, 5, 6], rep(1, 9) + [2, 2, 3, 4, 5, 6, 8],
    rep(1, 8) + [2, 2, 3, 4, 5, 6, 8, 10], rep(1, 7) + [2, 2, 3, 4, 5, 6, 8, 10, 13],
    rep(1, 6) + [2, 2, 3, 4, 5, 6, 8, 10, 13, 13], rep(1, 5) + [2, 2, 3, 4, 5, 6, 8, 10, 13, 13, 13],
    rep(1, 4) + [2, 2, 3, 4, 5, 6, 8, 10, 13, 13, 13, 13], rep(1, 3) + [2, 2, 3, 4, 5, 6, 8, 10, 13] + rep(13, 4),
    [1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 13] + rep(13, 5), [2, 2, 2, 3, 4, 5, 6, 8, 10, 13] + rep(13, 6),
    [2, 2, 3, 4, 5, 6, 8, 10, 13] + rep(13, 7), [2, 3, 4, 5, 6, 8, 10, 13] + rep(13, 8),
    [3, 4, 5, 6, 8, 10, 13] + rep(13, 9), [4, 5, 6, 8, 10, 13] + rep(13, 10), [6, 6, 8, 10, 13] + rep(13, 11),
    [8, 8, 10, 13, 17] + rep(17, 11), [11, 11, 13, 17, 24] + rep(24, 11), [15, 15, 17, 24] + rep(24, 12),
    [22, 22, 24] + rep(24, 13), rep(31, 16),
]


def test_lawc_transcription_has_the_shape_of_the_r_matrices():
    n_rows = LAWC_N.split("\n")[1:-1]
    assert len(n_rows) == 16 and all(len(r.split()) == 26 for r in n_rows)
    assert len(LAWC_AC) == len(LAWC_RE) == 26
    assert all(len(c) == 16 for c in LAWC_AC + LAWC_RE)


def test_every_cell_of_table_2c_resolves_to_the_lawc_plan():
    n_rows = [[int(v) for v in r.split()] for r in LAWC_N.strip().splitlines()]
    wrong = []
    for i, letter in enumerate(CODES):
        for j, aql in enumerate(AQLS):
            plan_letter, ac, re = sampling.resolve("reduced", letter, aql)
            ours = (sampling.REDUCED_SAMPLE_SIZE[plan_letter], ac, re)
            theirs = (n_rows[i][j], LAWC_AC[j][i], LAWC_RE[j][i])
            if ours != theirs:
                wrong.append(f"{letter} AQL {aql}: ours n/Ac/Re {ours}, AQLSchemes {theirs}")
    assert wrong == []


def test_table_2c_sample_sizes_and_name():
    # [LAWC] the sample size of each code letter's own plans (the column "sample size" of Table II-C)
    assert list(sampling.REDUCED_SAMPLE_SIZE.items()) == list(zip(
        CODES, [2, 2, 2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800], strict=True))
    assert sampling.TABLE_NAMES["reduced"] == "ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E)"


@pytest.mark.parametrize(("lot_size", "level", "aql", "expected"), [
    # [LAWC] cells, the code letter from Table 1: (code letter, plan letter, n, Ac, Re)
    (1000, "II", 1.0, ("J", "J", 32, 1, 3)),       # normal J 1.0 is n 80, 2/3
    (5000, "II", 2.5, ("L", "L", 80, 5, 8)),
    (5000, "II", 4.0, ("L", "L", 80, 7, 10)),
    (50, "II", 10, ("D", "D", 3, 1, 3)),
    (50, "II", 15, ("D", "D", 3, 1, 4)),
    (20, "II", 6.5, ("C", "D", 3, 0, 2)),           # C 6.5 points down: D's 0/2, n = 3
    (1000, "II", 0.25, ("J", "H", 20, 0, 1)),       # J 0.25 points up: H's 0/1, n = 20
    (1000, "II", 0.4, ("J", "K", 50, 0, 2)),        # J 0.40 points down: K's 0/2, n = 50
    (10, "II", 40, ("B", "B", 2, 2, 4)),            # row B at the high AQLs: 1/3 2/4 3/5, then 5/6
    (10, "II", 100, ("B", "B", 2, 5, 6)),
    (5, "II", 25, ("A", "A", 2, 1, 2)),
    (20, "II", 650, ("C", "C", 2, 21, 24)),
    (60, "II", 1000, ("E", "B", 2, 30, 31)),        # E 1000 points up through D and C to B
    (600000, "III", 0.015, ("R", "P", 315, 0, 1)),  # R 0.015 points up, Q too: P's 0/1
    (600000, "III", 0.025, ("R", "R", 800, 0, 2)),
])
def test_published_reduced_plans(lot_size, level, aql, expected):
    p = plan(lot_size, level, aql, "reduced")
    assert (p.code_letter, p.plan_letter, p.n, p.ac, p.re) == expected
    assert p.severity == "reduced" and p.n == sampling.REDUCED_SAMPLE_SIZE[p.plan_letter]


def test_reduced_plans_have_the_gap_and_never_sample_more_than_normal():
    gaps = 0
    for letter in CODES:
        for aql in AQLS:
            r_letter, r_ac, r_re = sampling.resolve("reduced", letter, aql)
            n_letter, _, _ = sampling.resolve("normal", letter, aql)
            assert r_re > r_ac, (letter, aql)
            gaps += r_re > r_ac + 1
            assert sampling.REDUCED_SAMPLE_SIZE[r_letter] <= sampling.SAMPLE_SIZE[n_letter], (letter, aql)
    assert gaps > 200  # the table's character: 0/2, 1/3, 1/4 ... (251 of the 416 cells resolve to a gap)


def test_the_gap_rule_of_a_reduced_plan():
    p = plan(1000, "II", 1.0, "reduced")  # J: n 32, Ac 1, Re 3
    assert [p.verdict(d) for d in (0, 1, 2, 3, 4)] == [
        "accepted", "accepted", "accepted_reinstate_normal", "not_accepted", "not_accepted"]
    assert [p.accepts(d) for d in (1, 2, 3)] == [True, True, False] and p.largest_accepted == 2
    normal = plan(1000, "II", 1.0)  # 2/3: no gap
    assert [normal.verdict(d) for d in (2, 3)] == ["accepted", "not_accepted"] and normal.largest_accepted == 2
    assert sampling.tighter_acceptance_number(p) is None  # the switching score is for normal inspection only


# --- the switching rules ----------------------------------------------------------------------------------

def run(state: SwitchingState, lots: list[int], *, ac: int = 1, re: int | None = None,
        tighter_ac: int | None = None, **kw: bool) -> tuple[SwitchingState, list[str | None]]:
    switches = []
    for d in lots:
        t = state.after_lot(LotOutcome(nonconforming=d, ac=ac, re=re, tighter_ac=tighter_ac, **kw))
        state = t.state
        switches.append(t.switched_to)
    return state, switches


def test_normal_to_tightened_when_2_of_5_or_fewer_consecutive_lots_are_not_accepted():
    state, switches = run(SwitchingState(), [0, 2, 0, 0, 2])  # Ac 1: 2 nonconforming is not accepted
    assert switches == [None, None, None, None, "tightened"] and state.severity == "tightened"
    state, switches = run(SwitchingState(), [2, 2])
    assert switches == [None, "tightened"]
    # 5 lots apart is not "2 of 5"
    state, switches = run(SwitchingState(), [2, 0, 0, 0, 0, 2])
    assert switches == [None] * 6 and state.severity == "normal"


def test_tightened_to_normal_after_5_consecutive_accepted_lots():
    start = SwitchingState("tightened")
    state, switches = run(start, [0, 0, 0, 0, 2, 0, 0, 0, 0])  # the run starts again after a rejection
    assert state.severity == "tightened" and state.tightened_accepted_run == 4 and state.tightened_not_accepted == 1
    state, switches = run(state, [0])
    assert switches == ["normal"] and state.severity == "normal" and state.switching_score == 0


def test_discontinued_after_5_lots_not_accepted_on_tightened_then_resumed_on_tightened():
    state, switches = run(SwitchingState("tightened"), [2, 0, 2, 0, 0, 2, 2, 0])
    assert state.severity == "tightened" and state.tightened_not_accepted == 4
    state, switches = run(state, [2])
    assert switches == ["discontinued"]
    with pytest.raises(Conflict):
        state.after_lot(LotOutcome(nonconforming=0, ac=1))
    state = state.resume()
    assert state.severity == "tightened" and state.tightened_not_accepted == 0
    with pytest.raises(Conflict):
        SwitchingState().resume()


def test_switching_score_with_acceptance_number_0_or_1_adds_2_per_accepted_lot():
    state, _ = run(SwitchingState(), [0] * 14)
    assert state.switching_score == 28 and not state.reduced_eligible
    state, _ = run(state, [1])  # Ac 1: accepted
    assert state.switching_score == 30 and state.reduced_eligible and state.severity == "normal"
    state, _ = run(state, [2])  # not accepted: back to 0
    assert state.switching_score == 0


def test_switching_score_with_acceptance_number_2_or_more_asks_for_the_tighter_aql():
    p = plan(1000, "II", 1.0)  # J: Ac 2; one AQL step tighter (0.65) J is Ac 1
    tighter = sampling.tighter_acceptance_number(p)
    assert (p.ac, tighter) == (2, 1)
    state, _ = run(SwitchingState(), [1, 0, 1], ac=p.ac, tighter_ac=tighter)
    assert state.switching_score == 9
    state, _ = run(state, [2], ac=p.ac, tighter_ac=tighter)  # accepted at 1.0, not at 0.65: reset
    assert state.switching_score == 0 and state.severity == "normal"


def test_normal_to_reduced_needs_score_30_steady_production_and_the_authority():
    state, switches = run(SwitchingState(), [0] * 15, reduced_wanted=True)
    assert switches[-1] == "reduced" and state.severity == "reduced"
    not_wanted, _ = run(SwitchingState(), [0] * 15, reduced_wanted=False)
    assert not_wanted.severity == "normal" and not_wanted.reduced_eligible
    unsteady, _ = run(SwitchingState(), [0] * 15, reduced_wanted=True, production_steady=False)
    assert unsteady.severity == "normal"


def test_reduced_to_normal_on_a_lot_not_accepted_or_irregular_production():
    state, switches = run(SwitchingState("reduced"), [0, 0, 2], re=2)
    assert switches == [None, None, "normal"] and state.switching_score == 0
    state, switches = run(SwitchingState("reduced"), [0], re=2, production_steady=False)
    assert switches == ["normal"]


def test_reduced_inspection_gap_accepts_the_lot_and_reinstates_normal():
    reduced = SwitchingState("reduced", lots=7)
    # Ac 1, Re 4 (e.g. D at AQL 15): up to Ac stays on reduced inspection
    for d in (0, 1):
        t = reduced.after_lot(LotOutcome(nonconforming=d, ac=1, re=4))
        assert (t.accepted, t.switched_to, t.state.severity, t.state.lots) == (True, None, "reduced", 8)
    # between Ac and Re: accepted, and back to normal inspection with a reason that says so
    for d in (2, 3):
        t = reduced.after_lot(LotOutcome(nonconforming=d, ac=1, re=4))
        assert (t.accepted, t.switched_to, t.state.severity) == (True, "normal", "normal")
        assert "accepted but normal inspection is reinstated" in (t.reason or "")
        assert t.state.switching_score == 0 and t.state.recent_normal == ()
    # Re or more: not accepted, back to normal
    for d in (4, 9):
        t = reduced.after_lot(LotOutcome(nonconforming=d, ac=1, re=4))
        assert (t.accepted, t.switched_to, t.state.severity) == (False, "normal", "normal")
        assert "not accepted on reduced inspection" in (t.reason or "")
    with pytest.raises(AssertionError):  # Re is needed on reduced inspection
        reduced.after_lot(LotOutcome(nonconforming=0, ac=1))


def test_the_authority_asks_for_reduced_inspection_once_the_score_allows_it():
    with pytest.raises(Conflict) as e:
        SwitchingState(switching_score=28).reduce()
    assert "28" in e.value.message
    with pytest.raises(Conflict):
        SwitchingState("tightened", switching_score=40).reduce()
    with pytest.raises(Conflict) as e:
        SwitchingState(switching_score=30).reduce(production_steady=False)
    assert e.value.field == "production_steady"
    state = SwitchingState(switching_score=30, recent_normal=(True,) * 4, lots=15).reduce()
    assert (state.severity, state.lots, state.switching_score) == ("reduced", 15, 0)


# --- the API ----------------------------------------------------------------------------------------------

def _codes() -> tuple[str, str]:
    u = uuid.uuid4().hex[:8].upper()
    return f"SUP-{u}", f"ITEM-{u}"


async def _lot(api: httpx.AsyncClient, supplier: str, item: str, lot: str, nonconforming: int,
               role: str = "inspector") -> httpx.Response:
    return await api.post("/api/quality/sampling/results", headers=role_headers(role), json={
        "supplier": supplier, "item": item, "lot": lot, "lot_size": 1000, "level": "II", "aql": 1.0,
        "nonconforming": nonconforming})


@pytest.mark.asyncio
async def test_sampling_api_follows_the_switching_state(api: httpx.AsyncClient):
    supplier, item = _codes()
    q = {"lot_size": 1000, "level": "II", "aql": 1.0, "supplier": supplier, "item": item}
    r = await api.get("/api/quality/sampling", params=q)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"]["severity"] == "normal" and body["state"]["switching_score"] == 0
    assert {k: body["plan"][k] for k in ("code_letter", "n", "ac", "re", "table")} == {
        "code_letter": "J", "n": 80, "ac": 2, "re": 3, "table": "ISO 2859-1 Table 2-A"}

    r = await _lot(api, supplier, item, f"{item}-1", 3)  # Re 3: not accepted
    assert r.status_code == 200 and r.json()["accepted"] is False and r.json()["switched_to"] is None
    again = await _lot(api, supplier, item, f"{item}-1", 3)  # a re-send changes nothing
    assert again.json()["duplicate"] is True and again.json()["state"]["lots"] == 1
    changed = await _lot(api, supplier, item, f"{item}-1", 0)
    assert changed.status_code == 409 and changed.json()["field"] == "lot"
    r = await _lot(api, supplier, item, f"{item}-2", 4)
    assert r.json()["switched_to"] == "tightened" and "2 of the last 2 lots" in r.json()["switch_reason"]

    r = await api.get("/api/quality/sampling", params=q)
    plan_t = r.json()["plan"]  # [NIBS] tightened J at 1.0: Re 2
    assert (plan_t["severity"], plan_t["n"], plan_t["ac"], plan_t["re"], plan_t["table"]) == (
        "tightened", 80, 1, 2, "ISO 2859-1 Table 2-B")
    for i in range(5):
        r = await _lot(api, supplier, item, f"{item}-t{i}", 1)  # accepted on tightened (Ac 1)
        assert r.json()["accepted"] is True
    assert r.json()["switched_to"] == "normal"
    assert (await api.get("/api/quality/sampling", params=q)).json()["plan"]["severity"] == "normal"


@pytest.mark.asyncio
async def test_discontinued_sampling_refuses_plans_until_the_quality_manager_resumes(api: httpx.AsyncClient):
    supplier, item = _codes()
    q = {"lot_size": 1000, "aql": 1.0, "supplier": supplier, "item": item}
    for i in range(7):  # 2 to get on tightened, 5 more not accepted on it
        r = await _lot(api, supplier, item, f"{item}-{i}", 5)
        assert r.status_code == 200, r.text
    assert r.json()["switched_to"] == "discontinued" and r.json()["state"]["severity"] == "discontinued"
    r = await api.get("/api/quality/sampling", params=q)
    assert r.status_code == 409 and "discontinued" in r.json()["detail"]
    assert (await _lot(api, supplier, item, f"{item}-x", 0)).status_code == 409

    resume = {"supplier": supplier, "item": item, "reason": "supplier replaced the heat treatment furnace"}
    r = await api.post("/api/quality/sampling/resume", headers=role_headers("inspector"), json=resume)
    assert r.status_code == 403
    r = await api.post("/api/quality/sampling/resume", headers=role_headers("quality_manager"), json=resume)
    assert r.status_code == 200 and r.json()["state"]["severity"] == "tightened"
    assert (await api.get("/api/quality/sampling", params=q)).json()["plan"]["severity"] == "tightened"


@pytest.mark.asyncio
async def test_sampling_api_refuses_what_the_standard_does_not_have(api: httpx.AsyncClient):
    supplier, item = _codes()
    r = await api.get("/api/quality/sampling", params={"lot_size": 1000, "aql": 0.5, "supplier": supplier,
                                                       "item": item})
    assert r.status_code == 422 and r.json()["field"] == "aql" and "0.65" in r.json()["detail"]
    r = await api.get("/api/quality/sampling", params={"lot_size": 1000, "aql": 1.0, "level": "IV",
                                                       "supplier": supplier, "item": item})
    assert r.status_code == 422 and "level" in r.json()["detail"]
    r = await api.post("/api/quality/sampling/results", json={
        "supplier": supplier, "item": item, "lot": f"{item}-big", "lot_size": 1000, "aql": 1.0,
        "nonconforming": 81})
    assert r.status_code == 422 and r.json()["field"] == "nonconforming"


@pytest.mark.asyncio
async def test_reduced_inspection_by_the_authority_and_back_to_normal_on_the_gap(api: httpx.AsyncClient):
    supplier, item = _codes()
    q = {"lot_size": 1000, "level": "II", "aql": 1.0, "supplier": supplier, "item": item}
    ask = {"supplier": supplier, "item": item, "reason": "supplier's process capability shown for a year"}
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("quality_manager"), json=ask)
    assert r.status_code == 409 and "switching score of this supplier and item is 0" in r.json()["detail"]
    assert r.json()["field"] == "supplier"

    async def score_30(prefix: str) -> None:
        for i in range(10):  # J at 1.0: Ac 2, accepted at 0.65 too (Ac 1): 3 points a lot
            r = await _lot(api, supplier, item, f"{item}-{prefix}{i}", 0)
            assert r.status_code == 200 and r.json()["switched_to"] is None, r.text
        state = (await api.get("/api/quality/sampling", params=q)).json()["state"]
        assert (state["severity"], state["switching_score"], state["reduced_eligible"]) == ("normal", 30, True)

    await score_30("a")
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("inspector"), json=ask)
    assert r.status_code == 403
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("quality_manager"), json=ask)
    assert r.status_code == 200 and r.json()["state"]["severity"] == "reduced", r.text
    body = (await api.get("/api/quality/sampling", params=q)).json()
    assert {k: body["plan"][k] for k in ("severity", "code_letter", "n", "ac", "re", "table")} == {
        "severity": "reduced", "code_letter": "J", "n": 32, "ac": 1, "re": 3,
        "table": "ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E)"}

    r = await _lot(api, supplier, item, f"{item}-r1", 1)  # up to Ac: stays on reduced inspection
    assert (r.json()["accepted"], r.json()["switched_to"], r.json()["n"]) == (True, None, 32)
    r = await _lot(api, supplier, item, f"{item}-r2", 2)  # between Ac 1 and Re 3: accepted, back to normal
    assert (r.json()["accepted"], r.json()["switched_to"], r.json()["severity"]) == (True, "normal", "reduced")
    assert "normal inspection is reinstated" in r.json()["switch_reason"]
    assert (await api.get("/api/quality/sampling", params=q)).json()["plan"]["n"] == 80

    await score_30("b")
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("quality_manager"),
                       json={**ask, "production_steady": False})
    assert r.status_code == 409 and r.json()["field"] == "production_steady"
    r = await api.post("/api/quality/sampling/reduce", headers=role_headers("quality_manager"), json=ask)
    assert r.status_code == 200
    r = await _lot(api, supplier, item, f"{item}-r3", 3)  # Re: not accepted, back to normal
    assert (r.json()["accepted"], r.json()["switched_to"]) == (False, "normal")
    assert "not accepted on reduced inspection" in r.json()["switch_reason"]
