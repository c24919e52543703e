"""Acceptance sampling by attributes: ISO 2859-1 (= ANSI/ASQ Z1.4, MIL-STD-105E) single sampling plans for
normal and tightened inspection, ANSI/ASQ Z1.4 (= MIL-STD-105E) single sampling plans for reduced inspection, and
the switching rules between normal, tightened and reduced inspection as a pure state machine.

The tables are data, transcribed in the layout of the printed standard: one row per sample size code letter,
one cell per AQL, each cell a plan "Ac/Re" or an arrow ("v": use the first plan below, "^": the first plan
above). Following an arrow changes the sample size too: the plan's row gives it.

Where the values were checked (every cell of 2-A and 2-B, resolved, was compared with the transcription
below; tests/test_sampling.py checks published values cell by cell):
- Table 1 (code letters): the AQL chart "ANSI/ASQC Z1.4/MIL-STD-105E/BS 6001/DIN 40080/ISO 2859"
  (pdfcoffee.com/aql-sampling-chart-pdf-free.html, scribd.com/document/339359187/AQL-Sampling-Chart),
  wisetool.com/sampling.htm, and GOST R ISO 2859-1 Table A.1 (base.garant.ru/71446952).
- Tables 2-A and 2-B: MIL-STD-105E Tables II-A/II-B, identical in ANSI/ASQ Z1.4 and ISO 2859-1 (the 1999
  edition's list of changes touches only the reduced, double and multiple plans; BS 6001-1:1999 foreword at
  pinzhi.org/thread-103021-1-1.html). Sources: the row-by-row listing of Table II-A in "MIL-STD-105E legible
  copy" (scribd.com/document/563507790/Tablas), the NIBS renderings of II-A and II-B for AQL 0.65..15
  (nibs.org/FMOC/DPW_AC/AC-TABLE.ASC), and the complete resolved matrices (n, Ac, Re) of J. Lawson's
  AQLSchemes (R package, "MIL-STD-105E - ANSI/ASQ Z1.4 ... from the published tables"), which agree with
  the rows below in all 2 x 16 x 26 cells. One cell: Table 2-A, letter A, AQL 10 is "v" here and in
  AQLSchemes; NIBS prints an up arrow there, which has no plan above it in the first row.
- Table 2-C (reduced inspection) is ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E), WITH its gap between Ac and
  Re (e.g. Ac 1 Re 4): on reduced inspection a lot with Ac < nonconforming < Re is accepted, but normal
  inspection is reinstated (Z1.4 / MIL-STD-105E, reduced inspection; see `lot_verdict`). Checked against
  the resolved matrices (n, Ac, Re) of AQLSchemes for reduced inspection (`ANSIASQSingleReducedss`,
  `...Reducedac`, `...Reducedre` in R/AAZ14Single.R, as in github.com/fjgonzalezmgt/AQLSchemesCust): all
  16 x 26 cells of TABLE_2C below, resolved, agree with them (tests/test_sampling.py). ISO 2859-1:1999's
  Table 2-C is a different table ("reduced plans have been changed to eliminate the gap between the
  acceptance and rejection numbers") and is NOT in TraceHub: no copy of its values could be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from core.errors import Conflict, InvalidInput

LETTERS = "ABCDEFGHJKLMNPQRS"  # S exists only in Table 2-B (n = 3150), reached by an arrow
SAMPLE_SIZE = dict(zip(LETTERS, (2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800, 1250, 2000, 3150),
                       strict=True))

# the preferred AQL series of the standard (percent nonconforming, or nonconformities per 100 items above 10)
AQLS = ("0.010", "0.015", "0.025", "0.040", "0.065", "0.10", "0.15", "0.25", "0.40", "0.65", "1.0", "1.5",
        "2.5", "4.0", "6.5", "10", "15", "25", "40", "65", "100", "150", "250", "400", "650", "1000")
AQL_VALUES = tuple(float(a) for a in AQLS)

LEVELS = ("S-1", "S-2", "S-3", "S-4", "I", "II", "III")
Level = Literal["S-1", "S-2", "S-3", "S-4", "I", "II", "III"]
Severity = Literal["normal", "tightened", "reduced"]

# Table 1: sample size code letters. (largest lot size of the row, letters for S-1 S-2 S-3 S-4 I II III)
TABLE_1: tuple[tuple[int | None, str], ...] = (
    (8, "AAAAAAB"),
    (15, "AAAAABC"),
    (25, "AABBBCD"),
    (50, "ABBCCDE"),
    (90, "BBCCCEF"),
    (150, "BBCDDFG"),
    (280, "BCDEEGH"),
    (500, "BCDEFHJ"),
    (1200, "CCEFGJK"),
    (3200, "CDEGHKL"),
    (10000, "CDFGJLM"),
    (35000, "CDFHKMN"),
    (150000, "DEGJLNP"),
    (500000, "DEGJMPQ"),
    (None, "DEHKNQR"),  # 500 001 and over
)

# Table 2-A: single sampling plans for normal inspection. Columns: AQLS, left to right.
TABLE_2A = {
    "A": "v v v v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31",
    "B": "v v v v v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31 44/45",
    "C": "v v v v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31 44/45 ^",
    "D": "v v v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31 44/45 ^ ^",
    "E": "v v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31 44/45 ^ ^ ^",
    "F": "v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^",
    "G": "v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^",
    "H": "v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^",
    "J": "v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "K": "v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "L": "v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "M": "v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "N": "v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "P": "v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "Q": "0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "R": "^ ^ 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
}

# Table 2-B: single sampling plans for tightened inspection ("-": no entry; row S has one plan)
TABLE_2B = {
    "A": "v v v v v v v v v v v v v v v v v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 27/28",
    "B": "v v v v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 27/28 41/42",
    "C": "v v v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 27/28 41/42 ^",
    "D": "v v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 27/28 41/42 ^ ^",
    "E": "v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 27/28 41/42 ^ ^ ^",
    "F": "v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^",
    "G": "v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^",
    "H": "v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^",
    "J": "v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "K": "v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "L": "v v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "M": "v v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "N": "v v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "P": "v v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "Q": "v 0/1 v v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "R": "0/1 ^ v 1/2 2/3 3/4 5/6 8/9 12/13 18/19 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "S": "- - 1/2 - - - - - - - - - - - - - - - - - - - - - - -",
}

# ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E): single sampling plans for reduced inspection, with the gap between Ac
# and Re (not ISO 2859-1:1999 Table 2-C, which has none). Each letter has its own sample size (below); the plans sit
# on the diagonals of Table 2-A: 0/1, ^, v, then 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 (14/17 21/24 in rows C-E).
# Rows A, B and C share n = 2, so the resolved values cannot tell an arrow between them from a plan: these cells
# follow Table 2-A's layout, which the printed II-C most plausibly keeps - A "0/1 v v" at AQL 6.5..15 (as in
# 2-A), B "^ v" after its 0/1 and its own plans up to 30/31 at AQL 1000 (2-A row B has plans there), C "^" at
# AQL 1000 (as in 2-A). Rows A and B keep the high-AQL plans without a gap (A 1/2 .. 30/31; B 1/3 2/4 3/5,
# then 5/6 ..), as AQLSchemes has them; either reading resolves to the same n, Ac and Re in every cell.
TABLE_2C = {
    "A": "v v v v v v v v v v v v v v 0/1 v v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 30/31",
    "B": "v v v v v v v v v v v v v 0/1 ^ v 0/2 1/3 2/4 3/5 5/6 7/8 10/11 14/15 21/22 30/31",
    "C": "v v v v v v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 14/17 21/24 ^",
    "D": "v v v v v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 14/17 21/24 ^ ^",
    "E": "v v v v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 14/17 21/24 ^ ^ ^",
    "F": "v v v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^",
    "G": "v v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^",
    "H": "v v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^",
    "J": "v v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "K": "v v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "L": "v v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "M": "v v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "N": "v v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "P": "v 0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "Q": "0/1 ^ v 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "R": "^ ^ 0/2 1/3 1/4 2/5 3/6 5/8 7/10 10/13 ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
}
REDUCED_SAMPLE_SIZE = dict(zip(LETTERS[:-1], (2, 2, 2, 3, 5, 8, 13, 20, 32, 50, 80, 125, 200, 315, 500, 800),
                               strict=True))

Cell = tuple[int, int] | str  # (Ac, Re), "v", "^" or "-"


def _parse(table: dict[str, str]) -> dict[str, tuple[Cell, ...]]:
    out: dict[str, tuple[Cell, ...]] = {}
    for letter, row in table.items():
        cells: list[Cell] = []
        for c in row.split():
            if c in ("v", "^", "-"):
                cells.append(c)
            else:
                ac, re_ = c.split("/")
                cells.append((int(ac), int(re_)))
        if len(cells) != len(AQLS):
            raise AssertionError(f"table row {letter} has {len(cells)} cells, not {len(AQLS)}")
        out[letter] = tuple(cells)
    return out


TABLES: dict[str, dict[str, tuple[Cell, ...]]] = {"normal": _parse(TABLE_2A), "tightened": _parse(TABLE_2B),
                                                  "reduced": _parse(TABLE_2C)}
TABLE_NAMES = {"normal": "ISO 2859-1 Table 2-A", "tightened": "ISO 2859-1 Table 2-B",
               "reduced": "ANSI/ASQ Z1.4 Table II-C (MIL-STD-105E)"}
SAMPLE_SIZES = {"normal": SAMPLE_SIZE, "tightened": SAMPLE_SIZE, "reduced": REDUCED_SAMPLE_SIZE}

Verdict = Literal["accepted", "accepted_reinstate_normal", "not_accepted"]


def lot_verdict(nonconforming: int, ac: int, re: int) -> Verdict:
    """A lot judged by a plan (Ac, Re). Up to Ac: accepted; Re or more: not accepted. Between the two (only the
    reduced plans of Z1.4 Table II-C have such a gap): the lot is accepted, but normal inspection is
    reinstated (ANSI/ASQ Z1.4 / MIL-STD-105E, reduced inspection)."""
    if nonconforming <= ac:
        return "accepted"
    if nonconforming >= re:
        return "not_accepted"
    return "accepted_reinstate_normal"


@dataclass(frozen=True)
class SamplingPlan:
    """A single sampling plan: inspect `n` items, accept the lot with at most `ac` nonconforming, reject at `re`.

    `code_letter` is Table 1's letter for the lot size and level; `plan_letter` the row the plan was found in
    after following arrows, which gives `n`. With `n` >= the lot size the standard says inspect every item."""

    code_letter: str
    n: int
    ac: int
    re: int
    plan_letter: str
    severity: str
    aql: str
    level: str
    lot_size: int

    @property
    def inspect_all(self) -> bool:
        return self.n >= self.lot_size

    @property
    def units_to_inspect(self) -> int:
        return min(self.n, self.lot_size)

    def verdict(self, nonconforming: int) -> Verdict:
        """accepted, accepted_reinstate_normal (reduced inspection, Ac < nonconforming < Re) or not_accepted."""
        return lot_verdict(nonconforming, self.ac, self.re)

    def accepts(self, nonconforming: int) -> bool:
        """The lot is accepted: at most Ac nonconforming, or (reduced inspection) fewer than Re."""
        return self.verdict(nonconforming) != "not_accepted"

    @property
    def largest_accepted(self) -> int:
        """The most nonconforming items with which the lot is still accepted: Re - 1 (Ac, but for the gap of a
        reduced plan)."""
        return self.re - 1


def aql_key(aql: float | str) -> str:
    """The preferred AQL value as the standard prints it; anything else is refused (field `aql`)."""
    try:
        value = float(aql)
    except (TypeError, ValueError):
        value = float("nan")
    for key, v in zip(AQLS, AQL_VALUES, strict=True):
        if abs(value - v) <= v * 1e-9:
            return key
    raise InvalidInput(f"aql: {aql!r} is not an AQL of ISO 2859-1; use one of {', '.join(AQLS)}", field="aql")


def code_letter(lot_size: int, level: str) -> str:
    """Table 1: the sample size code letter of a lot size at an inspection level."""
    if level not in LEVELS:
        raise InvalidInput(f"level: {level!r} is not an inspection level; use one of {', '.join(LEVELS)}",
                           field="level")
    if not isinstance(lot_size, int) or isinstance(lot_size, bool) or lot_size < 2:
        raise InvalidInput(f"lot_size: {lot_size!r} is not a lot size; Table 1 starts at 2 items",
                           field="lot_size")
    col = LEVELS.index(level)
    for upper, letters in TABLE_1:
        if upper is None or lot_size <= upper:
            return letters[col]
    raise AssertionError("Table 1 ends with an open row")


def resolve(severity: str, letter: str, aql: float | str) -> tuple[str, int, int]:
    """The plan a table gives for a code letter and an AQL, arrows followed: (plan letter, Ac, Re)."""
    table = TABLES.get(severity)
    if table is None:
        raise InvalidInput(f"severity: {severity!r} is not an inspection severity; use normal, tightened or "
                           "reduced", field="severity")
    col = AQLS.index(aql_key(aql))
    rows = [r for r in LETTERS if r in table]
    i = rows.index(letter)
    for _ in range(len(rows)):  # an arrow never points back: more steps than rows is a broken table
        cell = table[rows[i]][col]
        if cell == "v":
            i += 1
        elif cell == "^":
            i -= 1
        elif cell == "-":
            raise AssertionError(f"{TABLE_NAMES[severity]}: an arrow from {letter} at AQL {aql} leads nowhere")
        else:
            assert isinstance(cell, tuple)
            return rows[i], cell[0], cell[1]
        if not 0 <= i < len(rows):
            raise AssertionError(f"{TABLE_NAMES[severity]}: an arrow from {letter} at AQL {aql} leaves the table")
    raise AssertionError(f"{TABLE_NAMES[severity]}: the arrows from {letter} at AQL {aql} go round in a circle")


def plan(lot_size: int, level: str, aql: float | str, severity: str = "normal") -> SamplingPlan:
    """The single sampling plan for a lot: Table 1 gives the code letter, Table 2-A/2-B (or Z1.4 Table II-C for
    reduced inspection) the plan; the plan's row gives the sample size."""
    letter = code_letter(lot_size, level)
    key = aql_key(aql)
    plan_letter, ac, re_ = resolve(severity, letter, key)
    return SamplingPlan(code_letter=letter, n=SAMPLE_SIZES[severity][plan_letter], ac=ac, re=re_,
                        plan_letter=plan_letter,
                        severity=severity, aql=key, level=level, lot_size=lot_size)


def tighter_acceptance_number(p: SamplingPlan) -> int | None:
    """Ac of the normal plan one AQL step tighter, same sample (for the switching score when Ac >= 2)."""
    col = AQLS.index(p.aql)
    if p.severity != "normal" or col == 0:
        return None
    cell = TABLES["normal"][p.plan_letter][col - 1]
    return cell[0] if isinstance(cell, tuple) else None


# --- switching rules (ISO 2859-1:1999 clause 9) ----------------------------------------------------------

SWITCH_TO_TIGHTENED = (2, 5)  # 2 lots not accepted among 5 or fewer consecutive lots on normal inspection
TIGHTENED_TO_NORMAL = 5  # consecutive lots accepted on tightened inspection
DISCONTINUE_AFTER = 5  # lots not accepted while on tightened inspection (cumulative)
REDUCED_SCORE = 30  # switching score that allows reduced inspection


@dataclass(frozen=True)
class SwitchingState:
    """Where a supplier and item stand in the switching scheme. Pure data: `after_lot` returns the next one.

    - normal -> tightened: 2 lots not accepted within 5 or fewer consecutive lots (9.3.2);
    - tightened -> normal: 5 consecutive lots accepted (9.3.2);
    - tightened -> discontinued: 5 lots not accepted in the sequence of lots on tightened inspection (9.4);
      only `resume()` (after the supplier's corrective action) leaves it, back to tightened;
    - normal -> reduced: switching score at least 30, production at a steady rate, and the responsible
      authority considers reduced inspection desirable (9.3.3);
    - reduced -> normal: a lot not accepted, a lot accepted with Ac < nonconforming < Re (the gap of Z1.4
      Table II-C: "the lot is accepted but normal inspection is reinstated"), or production irregular or
      delayed (9.3.4). On reduced inspection `LotOutcome.re` is needed to tell the gap from a rejection.

    The responsible authority's wish for reduced inspection comes either with a lot (`LotOutcome.reduced_wanted`)
    or on its own, while the state is eligible (`reduce()`).

    The switching score (9.3.3.2, single sampling) starts at 0 with normal inspection. After each lot on
    normal inspection: with Ac >= 2, add 3 if the lot would also have been accepted at the AQL one step
    tighter, else reset it to 0; with Ac 0 or 1, add 2 if the lot was accepted, else reset it to 0.
    """

    severity: str = "normal"  # normal | tightened | reduced | discontinued
    switching_score: int = 0
    recent_normal: tuple[bool, ...] = ()  # accepted? for the last lots on normal inspection (at most 4 kept)
    tightened_accepted_run: int = 0
    tightened_not_accepted: int = 0
    lots: int = 0

    @property
    def reduced_eligible(self) -> bool:
        return self.severity == "normal" and self.switching_score >= REDUCED_SCORE

    def after_lot(self, outcome: LotOutcome) -> Transition:
        if self.severity == "discontinued":
            raise Conflict("acceptance sampling is discontinued (5 lots not accepted on tightened inspection): "
                           "it resumes, on tightened inspection, once the supplier's corrective action is "
                           "accepted by the responsible authority")
        if self.severity == "reduced" and outcome.re is None:
            raise AssertionError("a lot on reduced inspection is judged with its plan's Re (the gap of Table II-C)")
        verdict = lot_verdict(outcome.nonconforming, outcome.ac,
                              outcome.re if outcome.re is not None else outcome.ac + 1)
        accepted = verdict != "not_accepted"
        lots = self.lots + 1
        if self.severity == "normal":
            window = (*self.recent_normal, accepted)[-SWITCH_TO_TIGHTENED[1]:]
            if window.count(False) >= SWITCH_TO_TIGHTENED[0]:
                return Transition(SwitchingState("tightened", lots=lots), accepted, "tightened",
                                  f"{window.count(False)} of the last {len(window)} lots on normal inspection "
                                  "were not accepted")
            score = _score(self.switching_score, outcome, accepted)
            state = replace(self, switching_score=score, recent_normal=window[-(SWITCH_TO_TIGHTENED[1] - 1):],
                            lots=lots)
            if score >= REDUCED_SCORE and outcome.production_steady and outcome.reduced_wanted:
                return Transition(SwitchingState("reduced", lots=lots), accepted, "reduced",
                                  f"switching score {score} >= {REDUCED_SCORE}, steady production and reduced "
                                  "inspection wanted by the responsible authority")
            return Transition(state, accepted, None, None)
        if self.severity == "tightened":
            run = self.tightened_accepted_run + 1 if accepted else 0
            not_accepted = self.tightened_not_accepted + (0 if accepted else 1)
            if not_accepted >= DISCONTINUE_AFTER:
                return Transition(SwitchingState("discontinued", lots=lots), accepted, "discontinued",
                                  f"{not_accepted} lots not accepted on tightened inspection")
            if run >= TIGHTENED_TO_NORMAL:
                return Transition(SwitchingState("normal", lots=lots), accepted, "normal",
                                  f"{run} consecutive lots accepted on tightened inspection")
            return Transition(replace(self, tightened_accepted_run=run, tightened_not_accepted=not_accepted,
                                      lots=lots), accepted, None, None)
        if self.severity == "reduced":
            if verdict != "accepted" or not outcome.production_steady:
                why = (f"a lot was not accepted on reduced inspection ({outcome.nonconforming} nonconforming, "
                       f"Re {outcome.re})" if not accepted
                       else f"a lot was accepted on reduced inspection with {outcome.nonconforming} nonconforming, "
                            f"between Ac {outcome.ac} and Re {outcome.re}: the lot is accepted but normal "
                            "inspection is reinstated" if verdict == "accepted_reinstate_normal"
                       else "production is irregular or delayed")
                return Transition(SwitchingState("normal", lots=lots), accepted, "normal", why)
            return Transition(replace(self, lots=lots), accepted, None, None)
        raise AssertionError(f"unknown severity {self.severity!r}")

    def reduce(self, *, production_steady: bool = True) -> SwitchingState:
        """The responsible authority considers reduced inspection desirable (9.3.3 c): normal -> reduced, if the
        switching score is at least 30 and production is at a steady rate. Not a lot: `lots` stays."""
        if self.severity != "normal":
            raise Conflict(f"reduced inspection follows normal inspection only; this supplier and item are on "
                           f"{self.severity} inspection", field="supplier")
        if self.switching_score < REDUCED_SCORE:
            raise Conflict(f"the switching score of this supplier and item is {self.switching_score}: reduced "
                           f"inspection needs {REDUCED_SCORE} or more (lots accepted on normal inspection raise it)",
                           field="supplier")
        if not production_steady:
            raise Conflict("production_steady: reduced inspection needs production at a steady rate; ask again "
                           "once it is", field="production_steady")
        return SwitchingState("reduced", lots=self.lots)

    def resume(self) -> SwitchingState:
        """After corrective action: sampling starts again on tightened inspection (9.4)."""
        if self.severity != "discontinued":
            raise Conflict(f"sampling is not discontinued (it is on {self.severity} inspection); nothing to resume")
        return SwitchingState("tightened", lots=self.lots)


@dataclass(frozen=True)
class LotOutcome:
    """The result of one lot on original inspection, and what the switching rules need to know with it."""

    nonconforming: int
    ac: int
    re: int | None = None  # the plan's Re; needed on reduced inspection (gap of Z1.4 Table II-C), else Ac + 1
    tighter_ac: int | None = None  # `tighter_acceptance_number` of the plan used (needed when Ac >= 2)
    production_steady: bool = True
    reduced_wanted: bool = False  # the responsible authority considers reduced inspection desirable


@dataclass(frozen=True)
class Transition:
    state: SwitchingState
    accepted: bool
    switched_to: str | None
    reason: str | None


def _score(score: int, outcome: LotOutcome, accepted: bool) -> int:
    if outcome.ac >= 2:
        if outcome.tighter_ac is None:
            raise AssertionError("the switching score needs the acceptance number one AQL step tighter")
        return score + 3 if outcome.nonconforming <= outcome.tighter_ac else 0
    return score + 2 if accepted else 0
