"""Identifiers (EPC URN <-> GS1 Digital Link) and the CBV 2.0 event hash, against published vectors."""

from __future__ import annotations

import copy

import pytest

from domain.epcis_hash import event_hash, prehash, utc_millis
from domain.epcis_ids import (
    canonical,
    check_digit,
    dl_canonical,
    dl_to_urn,
    gcp_of_urn,
    is_class_pattern,
    lot_of,
    urn_to_dl,
)

URN_DL = [  # EPCIS_NOTES §5.4: published converter test vectors
    ("urn:epc:id:sgtin:0614141.107346.2017", "https://id.gs1.org/01/10614141073464/21/2017"),
    ("urn:epc:id:sgtin:0614141.812345.6789%2F%26%25%22!%3F()",
     "https://id.gs1.org/01/80614141123458/21/6789%2F%26%25%22%21%3F%28%29"),
    ("urn:epc:class:lgtin:4012345.012345.Lot987", "https://id.gs1.org/01/04012345123456/10/Lot987"),
    ("urn:epc:idpat:sgtin:4012345.098765.*", "https://id.gs1.org/01/04012345987652"),
    ("urn:epc:id:sscc:4012345.3111111111", "https://id.gs1.org/00/340123451111111111"),
    ("urn:epc:id:sscc:123456.06663868985", "https://id.gs1.org/00/012345666638689852"),
    ("urn:epc:id:sgln:4012345.00005.0", "https://id.gs1.org/414/4012345000054"),
    ("urn:epc:id:sgln:4012345.00005.122", "https://id.gs1.org/414/4012345000054/254/122"),
    ("urn:epc:id:pgln:4000001.00000", "https://id.gs1.org/417/4000001000005"),
    ("urn:epc:id:grai:4012345.00022.334455", "https://id.gs1.org/8003/04012345000221334455"),
    ("urn:epc:id:giai:4012345.ABC345", "https://id.gs1.org/8004/4012345ABC345"),
]


@pytest.mark.parametrize(("urn", "dl"), URN_DL)
def test_urn_to_digital_link_vectors(urn: str, dl: str):
    assert urn_to_dl(urn) == dl
    assert canonical(urn) == dl


@pytest.mark.parametrize(("urn", "dl"), [v for v in URN_DL if ":grai:" not in v[0] and ":giai:" not in v[0]])
def test_digital_link_back_to_urn_with_the_company_prefix_length(urn: str, dl: str):
    assert dl_to_urn(dl, len(gcp_of_urn(urn))) == urn


def test_check_digits():
    assert check_digit("1061414107346") == "4"
    assert check_digit("10614141234567890") == "8"
    assert [check_digit(b) for b in ("400638133393", "952123454321", "0950600013435")] == ["1", "3", "2"]


def test_canonical_digital_link_drops_domain_query_and_pads_the_gtin():
    assert dl_canonical("https://brand.example/shop/01/9506000134352/10/L1?17=261231") == \
        "https://id.gs1.org/01/09506000134352/10/L1"
    assert dl_canonical("https://id.example/01/09506000134352/21/2018/10/L1") is None  # qualifiers out of order
    assert canonical("urn:tracehub:lot:L-1") == "urn:tracehub:lot:L-1"
    assert lot_of(canonical("urn:epc:class:lgtin:4012345.012345.S%2F991")) == "S/991"
    assert is_class_pattern(canonical("urn:epc:idpat:sgtin:4012345.098765.*"))
    assert not is_class_pattern(canonical("urn:epc:class:lgtin:4012345.012345.Lot987"))


REFERENCE = {  # RalphTro/epcis-event-hash-generator tests/examples/epcisDocWithSingleEvent
    "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "shipping", "disposition": "in_transit",
    "epcList": ["urn:epc:id:sgtin:0614141.107346.2017", "urn:epc:id:sgtin:0614141.107346.2018"],
    "eventTime": "2022-02-16T20:33:31.116000-06:00", "eventTimeZoneOffset": "-06:00",
    "readPoint": {"id": "urn:epc:id:sgln:0614141.07346.1234"},
    "bizTransactionList": [{"type": "po", "bizTransaction": "http://transaction.acme.com/po/12345678"}],
}
REFERENCE_PREHASH = (
    "eventType=ObjectEventeventTime=2022-02-17T02:33:31.116ZeventTimeZoneOffset=-06:00epcListepc=https://id.gs1."
    "org/01/10614141073464/21/2017epc=https://id.gs1.org/01/10614141073464/21/2018action=OBSERVEbizStep=https://"
    "ref.gs1.org/cbv/BizStep-shippingdisposition=https://ref.gs1.org/cbv/Disp-in_transitreadPointid=https://id."
    "gs1.org/414/0614141073467/254/1234bizTransactionListbizTransaction=http://transaction.acme.com/po/12345678t"
    "ype=https://ref.gs1.org/cbv/BTT-po")
REFERENCE_HASH = "ni:///sha-256;3e0f2437f4cb5e8a1b832b769c0eed1bf3e1421f14061132e9800ded03f10182?ver=CBV2.0"


def test_event_hash_matches_the_reference_generator():
    assert prehash(REFERENCE) == REFERENCE_PREHASH
    assert event_hash(REFERENCE) == REFERENCE_HASH


def test_the_same_event_in_another_form_gets_the_same_id():
    other = copy.deepcopy(REFERENCE)
    other["epcList"] = ["https://brand.example/01/10614141073464/21/2018",  # DL, other domain, other order
                        "urn:epc:id:sgtin:0614141.107346.2017"]
    other["eventTime"] = "2022-02-17T02:33:31.1164Z"  # same instant in UTC, sub-millisecond digits
    other["bizStep"] = "urn:epcglobal:cbv:bizstep:shipping"
    other["disposition"] = "https://ref.gs1.org/cbv/Disp-in_transit"
    other["eventID"] = "urn:uuid:anything"  # not hashed
    other["recordTime"] = "2030-01-01T00:00:00Z"  # not hashed
    other["errorDeclaration"] = {"declarationTime": "2022-03-01T00:00:00Z", "reason": "did_not_occur"}
    assert event_hash(dict(reversed(list(other.items())))) == REFERENCE_HASH


def test_any_change_of_content_changes_the_id():
    for field, value in (("action", "ADD"), ("eventTimeZoneOffset", "+01:00"), ("bizStep", "receiving")):
        changed = {**REFERENCE, field: value}
        assert event_hash(changed) != REFERENCE_HASH, field
    with_ext = {**REFERENCE, "acme:batch": "B1"}
    assert event_hash(with_ext, {"acme": "https://ns.acme.example/"}) != REFERENCE_HASH
    assert "{https://ns.acme.example/}batch=B1" in prehash(with_ext, {"acme": "https://ns.acme.example/"})


def test_timestamps_round_half_up_to_milliseconds():
    assert utc_millis("2022-02-17T02:33:31.1165Z") == "2022-02-17T02:33:31.117Z"
    assert utc_millis("2022-02-17T02:33:31.1164Z") == "2022-02-17T02:33:31.116Z"
    assert utc_millis("2022-12-31T23:59:59.9996+00:00") == "2023-01-01T00:00:00.000Z"
    assert utc_millis("2022-02-16T20:33:31-06:00") == "2022-02-17T02:33:31.000Z"
