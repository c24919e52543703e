"""Capture validation: the compiled schema agrees with jsonschema, and the rules the schema cannot check."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from domain.epcis_validate import _slow, fast_event_valid, fast_valid, validate, validate_single_event

CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld", {"acme": "https://ns.acme.example/"}]


def doc(*events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-01-05T08:00:00Z", "epcisBody": {"eventList": list(events)}}


OBJECT = {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-05T08:00:00.000+01:00",
          "eventTimeZoneOffset": "+01:00", "bizStep": "shipping", "disposition": "in_transit",
          "epcList": ["urn:epc:id:sgtin:0614141.107346.2017"],
          "bizTransactionList": [{"type": "po", "bizTransaction": "urn:epcglobal:cbv:bt:0614141073467:PO-1"}],
          "acme:carrier": "DHL"}
TRANSFORM = {"type": "TransformationEvent", "eventTime": "2026-01-05T08:00:00Z", "eventTimeZoneOffset": "+00:00",
             "inputQuantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.HEAT1", "quantity": 5,
                                    "uom": "KGM"}],
             "outputQuantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012346.S-991", "quantity": 4.5}],
             "bizStep": "commissioning", "ilmd": {"cbvmda:lotNumber": "S-991"}}
AGG = {"type": "AggregationEvent", "action": "ADD", "eventTime": "2026-01-05T08:00:00Z",
       "eventTimeZoneOffset": "+00:00", "parentID": "urn:epc:id:sscc:4012345.3111111111",
       "childEPCs": ["urn:epc:id:sgtin:0614141.107346.2017"], "bizStep": "packing"}


def broken(field: str, value: Any, base: dict[str, Any] = OBJECT) -> dict[str, Any]:
    ev = copy.deepcopy(base)
    if value is None:
        ev.pop(field)
    else:
        ev[field] = value
    return ev


SCHEMA_FAILURES = [  # (event, field the violation names)
    (broken("action", None), "(event)"),
    (broken("action", "MOVE"), "action"),
    (broken("eventTime", "2026-01-05T08:00:00"), "eventTime"),  # no offset
    (broken("eventTimeZoneOffset", "+25:00"), "eventTimeZoneOffset"),
    (broken("bizStep", "transforming"), "bizStep"),  # a bare non-CBV term
    (broken("quantityList", [{"epcClass": "urn:epc:class:lgtin:4012345.012345.L1", "quantity": "5"}]),
     "quantityList[0].quantity"),
    (broken("ilmd", {"cbvmda:lotNumber": "L1"}), "(event)"),  # ILMD only with ADD
    (broken("certificationInfo", {"inline": "object"}), "certificationInfo"),
    (broken("epcList", ["urn:epc:id:sgtin:0614141.107346.2017", "urn:epc:id:sgtin:0614141.107346.2017"]),
     "epcList"),
    (broken("action", "ADD", TRANSFORM), "(event)"),  # a TransformationEvent has no action
    ({**AGG, "type": "AssociationEvent", "childEPCs": []}, "childEPCs"),  # TCR-54, also our own rule
    (broken("bare_field", 1), "bare_field"),  # extension keys must be namespaced
    (broken("ilmd", {"lotNumber": "L1"}, TRANSFORM), "ilmd.lotNumber"),
]


@pytest.mark.parametrize(("event", "field"), SCHEMA_FAILURES)
def test_compiled_schema_and_jsonschema_agree_on_failures(event: dict[str, Any], field: str):
    d = doc(OBJECT, event)
    assert not fast_valid(d)
    assert not fast_event_valid(event), "the per-event-type check accepts what the whole schema refused"
    assert list(_slow().iter_errors(d)), "jsonschema accepts what the compiled schema refused"
    violations = validate(d)
    assert violations and all(v.event == 1 for v in violations), violations
    assert field in {v.field for v in violations}, [v.field for v in violations]


@pytest.mark.parametrize("event", [OBJECT, TRANSFORM, AGG])
def test_compiled_schema_and_jsonschema_agree_on_valid_events(event: dict[str, Any]):
    d = doc(event)
    assert fast_valid(d) and fast_event_valid(event)
    assert not list(_slow().iter_errors(d))
    assert validate(d) == []


RULE_FAILURES = [
    (broken("parentID", None, AGG), "parentID"),
    (broken("other:field", 1), "other:field"),  # prefix not declared
    (broken("sensorElementList", [{"sensorMetadata": {"deviceID": "urn:epc:id:giai:4012345.1"},
                                   "sensorReport": [{"type": "Temperature", "value": 5, "uom": "CEL",
                                                     "deviceID": "urn:epc:id:giai:4012345.1"}]}]),
     "sensorElementList[0].sensorReport[0].deviceID"),
    ({**OBJECT, "eventID": "urn:uuid:7e1f0c2a-2b7e-4c1e-9a53-1a0b5d2f8e11",
      "errorDeclaration": {"declarationTime": "2026-01-06T00:00:00Z", "reason": "did_not_occur",
                           "correctiveEventIDs": ["urn:uuid:1"]}}, "errorDeclaration.correctiveEventIDs"),
]


@pytest.mark.parametrize(("event", "field"), RULE_FAILURES)
def test_rules_the_schema_cannot_check(event: dict[str, Any], field: str):
    d = doc(OBJECT, event)
    assert fast_valid(d) and fast_event_valid(event) and not list(_slow().iter_errors(d)), \
        "the schema alone lets this through"
    assert [(v.event, v.field) for v in validate(d)] == [(1, field)]


def test_every_violation_is_listed_with_its_event():
    d = doc(OBJECT, broken("action", None), OBJECT, broken("bizStep", "transforming"), broken("parentID", None, AGG))
    assert sorted({v.event for v in validate(d)}) == [1, 3, 4]


def test_document_level_problems_and_single_events():
    d = doc(OBJECT)
    del d["schemaVersion"]
    assert [v.event for v in validate(d)] == [None]
    assert validate({"type": "Nonsense"})[0].field == "type"
    assert validate_single_event({**OBJECT, "@context": CTX}) == []
    assert validate_single_event(dict(OBJECT))[0].field == "@context"


ASSOC = {k: v for k, v in {**AGG, "type": "AssociationEvent", "bizStep": "installing",
                           "parentID": "urn:epc:id:grai:4012345.00022.1"}.items() if k != "childEPCs"}


@pytest.mark.parametrize("action", ["ADD", "OBSERVE"])
def test_an_association_that_adds_or_observes_needs_children(action: str):
    # the 2.0.1 schema refuses it too, but only names "(event)": the rule names the field to fix (TCR-54)
    for kids in ({}, {"childEPCs": []}, {"childQuantityList": []}):
        violations = validate(doc(OBJECT, {**ASSOC, "action": action, **kids}))
        assert (1, "childEPCs") in [(v.event, v.field) for v in violations], (kids, violations)
        assert "needs childEPCs or childQuantityList" in next(v.message for v in violations if v.field == "childEPCs")
    # with either list, or when disassociating everything, it is fine
    assert validate(doc({**ASSOC, "action": action, "childEPCs": ["urn:epc:id:giai:4012345.SENSOR1"]})) == []
    assert validate(doc({**ASSOC, "action": action, "childQuantityList": [
        {"epcClass": "urn:epc:class:lgtin:4012345.012345.L1", "quantity": 2}]})) == []
    assert validate(doc({**ASSOC, "action": "DELETE"})) == []


@pytest.mark.parametrize(("key", "ok"), [
    ("cbvmda:lotNumber", True), ("acme:heat", True), ("https://ns.other.example/heat", True),
    ("zzz:heat", False),  # prefix not declared in @context
    ("epcis:bizStep", False), ("cbv:BizStep-shipping", False),  # EPCIS / CBV terms, not master data
    ("https://ref.gs1.org/epcis/action", False), ("urn:epcglobal:cbv:bizstep:shipping", False),
])
def test_ilmd_keys_are_declared_master_data_attributes(key: str, ok: bool):
    event = {**TRANSFORM, "ilmd": {"cbvmda:lotNumber": "S-991", key: "x"}}
    d = doc(event)
    assert fast_valid(d) and not list(_slow().iter_errors(d)), "the schema alone lets every one of these through"
    assert [(v.event, v.field) for v in validate(d)] == ([] if ok else [(0, f"ilmd.{key}")])


SAMPLED = "urn:epc:id:sgtin:0614141.107346.S1"


def _at(minute: int, **fields: Any) -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": f"2026-01-05T08:{minute:02d}:00Z",
            "eventTimeZoneOffset": "+00:00", "epcList": [SAMPLED], **fields}


def test_a_sampled_instance_next_event_must_end_its_life():
    sampling = _at(0, bizStep="sampling", disposition="non_conformant")
    # the sample goes on as if nothing happened: the next event naming it is refused, with the field
    later = _at(5, bizStep="shipping", eventID="urn:uuid:0b6a7d4e-0f0e-4a57-8c3f-7d5d8b6c0a11")
    d = doc(OBJECT, sampling, later)
    assert fast_valid(d), "the schema alone lets this through"
    [v] = validate(d)
    assert (v.event, v.field, v.event_id) == (2, "action", later["eventID"])
    assert "was sampled (bizStep sampling, event 1)" in v.message and "action DELETE" in v.message
    assert SAMPLED.replace("urn:epc:id:sgtin:0614141.107346.", "") in v.message
    # order is by eventTime, not by place in the document; the identifier matches in any form (Digital Link)
    dl = _at(5, bizStep="shipping", epcList=["https://brand.example/01/10614141073464/21/S1"])
    assert [(v.event, v.field) for v in validate(doc(dl, _at(0, bizStep="https://ref.gs1.org/cbv/BizStep-sampling")))] \
        == [(0, "action")]
    # destroyed next: fine; only the next event counts, and an instance sampled but never seen again is fine
    destroy = _at(5, action="DELETE", bizStep="destroying", disposition="destroyed")
    assert validate(doc(sampling, destroy, _at(9, bizStep="shipping"))) == []
    assert validate(doc(sampling)) == []
    # a sampling event that itself ends the instance needs nothing after it; other instances are not affected
    assert validate(doc(_at(0, action="DELETE", bizStep="sampling"))) == []
    assert validate(doc(sampling, _at(5, bizStep="shipping", epcList=["urn:epc:id:sgtin:0614141.107346.S2"]))) == []


@pytest.mark.parametrize(("body", "field"), [
    ([None, None], "epcisBody"),  # found by the API fuzzing: a 500 before
    ("events", "epcisBody"),
    ({"eventList": {"type": "ObjectEvent"}}, "epcisBody.eventList"),
])
def test_a_body_of_the_wrong_shape_is_refused_naming_it(body: Any, field: str):
    d = {**doc(OBJECT), "epcisBody": body}
    out = validate(d)
    assert [v.field for v in out] == [field], out
    q = {**doc(OBJECT), "type": "EPCISQueryDocument", "epcisBody": {"queryResults": {"resultsBody": [1]}}}
    assert [v.field for v in validate(q)] == ["epcisBody.queryResults.resultsBody"]
