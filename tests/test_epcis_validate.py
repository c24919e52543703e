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
