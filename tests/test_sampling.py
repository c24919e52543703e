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
                        (lambda: plan(1000, "II", 1.0, "reduced"), "severity"),
                        (lambda: plan(1000, "II", 1.0, "loose"), "severity")]:
        with pytest.raises(InvalidInput) as e:
            call()
        assert e.value.field == field and e.value.message.startswith(field)
    with pytest.raises(InvalidInput) as e:
        plan(1000, "II", 1.0, "reduced")
    assert "Table 2-C" in e.value.message and "not in TraceHub" in e.value.message


# --- the switching rules ----------------------------------------------------------------------------------

def run(state: SwitchingState, lots: list[int], *, ac: int = 1, tighter_ac: int | None = None,
        **kw: bool) -> tuple[SwitchingState, list[str | None]]:
    switches = []
    for d in lots:
        t = state.after_lot(LotOutcome(nonconforming=d, ac=ac, tighter_ac=tighter_ac, **kw))
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
    state, switches = run(SwitchingState("reduced"), [0, 0, 2])
    assert switches == [None, None, "normal"] and state.switching_score == 0
    state, switches = run(SwitchingState("reduced"), [0], production_steady=False)
    assert switches == ["normal"]


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
