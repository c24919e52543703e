"""Activities that talk to equipment and outside systems through connectors: process reads, sampled
curves (long-running, heartbeating, resumable), material certificates, ERP polling, MES equipment states.

Errors go through activities/errors.py like every other activity's: an outage is retried by the call's
RetryPolicy, a rejection fails the step with the peer's message."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.base import TransactionalActivities
from activities.errors import translated
from activities.models import PurchaseReceipt, WorkOrderInput, released_work_order
from activities.models_connectors import (
    CertificateResult,
    EquipmentStateReport,
    FetchCertificateInput,
    PollErpInput,
    PollErpResult,
    ProcessParameter,
    ProcessValue,
    ReadProcessInput,
    ReadProcessResult,
    SampleProcessInput,
    SampleProcessResult,
    SkipInspectionInput,
)
from connectors.base import Connector
from connectors.erpnext.documents import (  # noqa: F401  (moved there; still importable from here)
    erpnext_field,
    receipt_from_erpnext,
    work_order_from_erpnext,
)
from connectors.errors import ConnectorConfigError, DeviceRejected
from connectors.polling import PURCHASE_RECEIPT as PURCHASE_RECEIPT_DOC
from connectors.polling import WORK_ORDER as WORK_ORDER_DOC
from connectors.polling import PollableErp, PolledDocument, Version
from connectors.registry import connector_class
from connectors.soap.values import flatten
from core.errors import InvalidInput, NotFound
from core.settings import NcrSettings
from domain import devices
from domain.endpoints import find_endpoint

WORK_ORDER_WORKFLOW = "WorkOrderWorkflow"
log = logging.getLogger("tracehub.erp.poll")


class ConnectorActivities(TransactionalActivities):
    """Activities that open an endpoint's connector; built once per worker."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *,
                 ncr_table: dict[str, Any] | None = None) -> None:
        """`ncr_table`: the settings' NCR durations per severity (Settings.ncr.table()), which a polled release gets
        as the webhook's does; None: the settings' defaults."""
        super().__init__(sessionmaker)
        self.ncr_table = ncr_table if ncr_table is not None else NcrSettings().table()

    async def connector(self, endpoint: str) -> Connector:
        """The endpoint's connector (not yet open); a missing or invalid endpoint is a config error."""
        async with self.sm() as s:
            ep = await find_endpoint(s, endpoint)
        if ep is None:
            raise NotFound(f"no endpoint named {endpoint!r}: create it (POST /api/endpoints)", field="endpoint")
        try:
            cls = connector_class(ep.kind)
        except KeyError as exc:
            raise ConnectorConfigError(f"endpoint {endpoint!r}: {exc.args[0]}", field="kind") from exc
        return cls(ep.config)

    # --- process data --------------------------------------------------------------------------------

    @activity.defn
    @translated
    async def read_process(self, inp: ReadProcessInput) -> ReadProcessResult:
        """Read the operation's start or end parameters, store them, and judge each against its window."""
        by_endpoint: dict[str, list[ProcessParameter]] = {}
        for p in inp.parameters:
            by_endpoint.setdefault(p.endpoint, []).append(p)
        result = ReadProcessResult()
        for endpoint, params in by_endpoint.items():
            async with await self.connector(endpoint) as conn:
                readings = await conn.read_many([p.point for p in params])
            async with self.tx() as s:
                for p, r in zip(params, readings, strict=True):
                    unit = p.unit or r.unit
                    row = await devices.record_reading(
                        s, work_order=inp.work_order, seq=inp.seq, run=inp.run, parameter=p.name, phase=inp.phase,
                        sample=0, endpoint=endpoint, point=p.point, value=r.value, unit=unit, lower=p.lower,
                        upper=p.upper, in_window=p.judge(r.value), at=r.at)
                    # a retried attempt reads the equipment again, but the value of record is the one stored
                    # first: that one is judged and reported, never the newer one the database did not keep
                    value, unit = _stored_value(row), row.unit
                    ok = p.judge(value)
                    result.values.append(ProcessValue(parameter=p.name, value=value, unit=unit, in_window=ok))
                    if ok is False:
                        result.deviations.append(_deviation(p, value, unit, f"at the {inp.phase} of operation "
                                                                         f"{inp.seq}"))
        return result

    @activity.defn
    @translated
    async def sample_process(self, inp: SampleProcessInput) -> SampleProcessResult:
        """Sample one parameter every `every_s` from `started_at`, for `for_s` (or until cancelled when the
        operation ends), heartbeating the next sample's index. After a worker restart Temporal retries it
        with the last heartbeat, and sampling resumes where it was: samples already stored stay, the slots
        that passed while no worker ran are skipped. Returns at the first value outside the window."""
        p = inp.parameter
        assert p.every_s is not None
        every = p.every_s
        details = activity.info().heartbeat_details
        summary = await self._sample_summary(inp)
        # heartbeats are throttled, so the last one may lag what was stored: resume after both
        index = max(int(details[0]) if details else 0, summary.next_index)
        total = math.floor(p.for_s / every + 1e-9) + 1 if p.for_s is not None else None
        started = inp.started_at if inp.started_at.tzinfo else inp.started_at.replace(tzinfo=UTC)
        conn = await self.connector(p.endpoint)
        async with conn:
            while total is None or index < total:
                due = started + timedelta(seconds=index * every)
                now = datetime.now(UTC)
                if now - due > timedelta(seconds=max(every, 2.0)):
                    # slots that passed while no worker ran are gone; a short lag is caught up instead
                    index = math.floor((now - started).total_seconds() / every + 1e-9)
                    continue
                if due > now:
                    await asyncio.sleep((due - now).total_seconds())
                reading = (await conn.read_many([p.point]))[0]
                unit = p.unit or reading.unit
                async with self.tx() as s:
                    row = await devices.record_reading(
                        s, work_order=inp.work_order, seq=inp.seq, run=inp.run, parameter=p.name, phase="during",
                        sample=index, endpoint=p.endpoint, point=p.point, value=reading.value, unit=unit,
                        lower=p.lower, upper=p.upper, in_window=p.judge(reading.value), at=reading.at)
                    value, unit = _stored_value(row), row.unit  # a sample stored before stands, as in read_process
                ok = p.judge(value)
                summary.add(value)
                index += 1
                activity.heartbeat(index)
                if ok is False:
                    return summary.result(p, _deviation(p, value, unit,
                                                        f"during operation {inp.seq} (sample {index - 1})"))
        return summary.result(p, None)

    async def _sample_summary(self, inp: SampleProcessInput) -> _Summary:
        """What an earlier attempt stored already (so a resumed curve reports all its samples)."""
        summary = _Summary()
        async with self.sm() as s:
            for r in await devices.readings(s, inp.work_order):
                if (r.seq, r.run, r.parameter, r.phase) == (inp.seq, inp.run, inp.parameter.name, "during"):
                    summary.add(r.value)
                    summary.next_index = max(summary.next_index, r.sample + 1)
        return summary

    # --- material certificates -------------------------------------------------------------------------

    @activity.defn
    @translated
    async def fetch_certificate(self, inp: FetchCertificateInput) -> CertificateResult:
        """Fetch the certificate of the lot's heat from the supplier's service and judge it against the
        material's specification. A SOAP Fault fails this step with the supplier's message."""
        spec = inp.spec
        if not inp.heat_number:
            failures = ["no heat number on the receipt line: the supplier's certificate cannot be found"]
            async with self.tx() as s:
                await devices.record_certificate_check(s, lot=inp.lot, certificate=None, verdict="failed",
                                                       failures=failures)
            return CertificateResult(lot=inp.lot, verdict="failed", failures=failures)
        conn = await self.connector(spec.certificate_endpoint)
        certificate = getattr(conn, "certificate", None)
        if certificate is None:
            raise ConnectorConfigError(f"endpoint {spec.certificate_endpoint!r} ({conn.kind}) is not a certificate "
                                       "service: use a soap endpoint with certificate_operation", field="kind")
        try:
            async with conn:
                document = await certificate(inp.heat_number)
        except DeviceRejected as exc:
            async with self.tx() as s:
                await devices.record_certificate_check(s, lot=inp.lot, certificate=None, verdict="unavailable",
                                                       failures=[exc.message])
            raise
        values = flatten(document)
        failures = judge_certificate(values, spec)
        async with self.tx() as s:
            row = await devices.store_certificate(
                s, endpoint=spec.certificate_endpoint, heat_number=inp.heat_number,
                supplier=values.get("supplier") or inp.supplier, certificate_no=_str(values.get("certificate_no")),
                grade=_str(values.get("grade")), values=values, document=document)
            verdict = "failed" if failures else "passed"
            await devices.record_certificate_check(s, lot=inp.lot, certificate=row, verdict=verdict, failures=failures)
        return CertificateResult(lot=inp.lot, verdict=verdict, certificate_no=row.certificate_no, grade=row.grade,
                                 failures=failures)

    @activity.defn
    @translated
    async def skip_inspection(self, inp: SkipInspectionInput) -> None:
        async with self.tx() as s:
            await devices.skip_inspection(s, number=inp.inspection, reason=inp.reason)

    # --- ERP polling (for ERPs without webhooks) ------------------------------------------------------

    @activity.defn
    @translated
    async def poll_erp(self, inp: PollErpInput) -> PollErpResult:
        """Read work orders and purchase receipts new or changed since the last poll, start a work order's
        workflow or signal it a receipt. Duplicates are harmless across polls: the ERP inbox keys each
        document version, workflow ids are business keys (REJECT_DUPLICATE), receipts are signalled once.

        The endpoint's connector lists and reads the documents (connectors.polling.PollableErp): ERPNext lists
        `name` and `modified` only (a Frappe list never carries child tables) and reads each changed document in
        full; a `rest` endpoint lists where its `poll` config says, with its field names. Each document stands
        on its own: one that cannot become a work order or a receipt is recorded as a rejected ERP event naming
        the field and what to fix (`GET /api/endpoints/{endpoint}/rejected`), and the watermark moves past it;
        the ERP's next change of it is a new version, which the next poll reads again. An outage still fails
        the poll (retried)."""
        client = activity.client()
        task_queue = inp.task_queue or activity.info().task_queue
        result = PollErpResult()
        conn = await self.connector(inp.endpoint)
        if not isinstance(conn, PollableErp):
            raise ConnectorConfigError(f"endpoint {inp.endpoint!r} ({conn.kind}) cannot be polled for ERP "
                                       "documents: use an erpnext endpoint, or a rest endpoint with poll "
                                       "configured", field="kind")
        erp: PollableErp = conn
        async with conn:
            async with self.sm() as s:
                since_wo = await devices.poll_watermark(s, inp.endpoint, WORK_ORDER_DOC)
                since_pr = await devices.poll_watermark(s, inp.endpoint, PURCHASE_RECEIPT_DOC)
            # >= the watermark: documents modified in the same instant as the last one are seen again and
            # recognised by the inbox, rather than missed

            async def handled(doctype: str, row: Version) -> bool:
                # this version is in the ERP inbox already (taken, rejected, or a receipt that went in with its
                # work order's start): no need to read it in full again (the watermark lists the last one again)
                async with self.sm() as s:
                    return await devices.erp_event_seen(s, f"poll:{inp.endpoint}:{doctype}:{row.name}:{row.modified}")

            for row in await erp.changed(WORK_ORDER_DOC, since_wo):
                result.seen += 1
                # None: handled already, or deleted since it was listed
                doc = None if await handled(WORK_ORDER_DOC, row) else await erp.polled_document(WORK_ORDER_DOC, row)
                if doc is not None:
                    try:
                        await self._poll_work_order(client, erp, inp.endpoint, task_queue, doc, result)
                    except InvalidInput as exc:
                        await self._reject(inp.endpoint, doc, doc.work_order or doc.name or row.name, exc, result)
                async with self.tx() as s:
                    await devices.advance_watermark(s, inp.endpoint, WORK_ORDER_DOC, row.modified)
            for row in await erp.changed(PURCHASE_RECEIPT_DOC, since_pr):
                result.seen += 1
                doc = None if await handled(PURCHASE_RECEIPT_DOC, row) else \
                    await erp.polled_document(PURCHASE_RECEIPT_DOC, row)
                if doc is not None:
                    try:
                        await self._poll_receipt(client, erp, inp.endpoint, doc, result)
                    except InvalidInput as exc:
                        await self._reject(inp.endpoint, doc, doc.work_order or doc.name or row.name, exc, result)
                async with self.tx() as s:
                    await devices.advance_watermark(s, inp.endpoint, PURCHASE_RECEIPT_DOC, row.modified)
        return result

    async def _reject(self, endpoint: str, doc: PolledDocument, key: str, exc: InvalidInput,
                      result: PollErpResult) -> None:
        """Record a document the poll cannot use, once per version: a rejected event in the ERP inbox."""
        doctype, name, modified = doc.doctype, doc.name, doc.modified
        log.warning("ERP %s %s %s (modified %s) rejected: %s", endpoint, doctype, name, modified, exc.message)
        async with self.tx() as s:
            await devices.remember_erp_event(
                s, event_id=f"poll:{endpoint}:{doctype}:{name}:{modified}", event_type=REJECTED[doctype], key=key,
                workflow_id=f"work-order-{key}",
                payload={"source": "poll", "endpoint": endpoint, "doctype": doctype, "document": name,
                         "modified": modified, "field": exc.field, "reason": exc.message})
        result.rejected.append(f"{doctype} {name}")

    async def _poll_work_order(self, client: Client, erp: PollableErp, endpoint: str, task_queue: str,
                               doc: PolledDocument, result: PollErpResult) -> None:
        order = erp_input(WorkOrderInput, erp, doc)
        # the input the webhook's release builds; the audit trail names the poll of this endpoint as the sender
        order = released_work_order(order, self.ncr_table, sent_by=f"poll:{endpoint}")
        wf_id = f"work-order-{order.number}"
        # start first, remember after: a start that failed on an outage is tried again by the next attempt,
        # and a start that succeeded twice cannot happen (the id is the business key, REJECT_DUPLICATE)
        try:
            await client.start_workflow(WORK_ORDER_WORKFLOW, order, id=wf_id, task_queue=task_queue,
                                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                                        id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
            started = True
            result.started.append(order.number)
        except WorkflowAlreadyStartedError:
            started = False  # released by webhook, or a change of a work order already running
        async with self.tx() as s:
            # keyed by the ERP's name of the document (ERPNext: the work order number), as `handled` looks it up
            await devices.remember_erp_event(
                s, event_id=f"poll:{endpoint}:{WORK_ORDER_DOC}:{doc.name}:{doc.modified}",
                event_type="work_order.released" if started else "work_order.changed", key=order.number,
                workflow_id=wf_id, payload={"source": "poll", "work_order": order.model_dump(mode="json")})
            if started:  # its receipts went in with the start: the receipt pass must not signal them again
                for r in doc.receipts:
                    await devices.remember_erp_event(
                        s, event_id=f"poll:{endpoint}:{PURCHASE_RECEIPT_DOC}:{r.name}:{r.modified}",
                        event_type="purchase_receipt.posted", key=order.number, workflow_id=wf_id,
                        payload={"source": "poll", "receipt": r.name, "with_start": True})

    async def _poll_receipt(self, client: Client, erp: PollableErp, endpoint: str, doc: PolledDocument,
                            result: PollErpResult) -> None:
        number = doc.work_order
        if not number:
            return
        event_id = f"poll:{endpoint}:{PURCHASE_RECEIPT_DOC}:{doc.name}:{doc.modified}"
        async with self.sm() as s:
            if await devices.erp_event_seen(s, event_id):
                return
        receipt = erp_input(PurchaseReceipt, erp, doc).model_copy(update={"sent_by": f"poll:{endpoint}"})
        try:
            await client.get_workflow_handle(f"work-order-{number}").signal("receive_material", receipt)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            return  # the work order is not running (yet): its start reads its receipts from the ERP
        result.signalled.append(receipt.receipt)
        # remembered after the signal: a crash in between signals it again, and the workflow ignores a
        # receipt number it has
        async with self.tx() as s:
            await devices.remember_erp_event(
                s, event_id=event_id, event_type="purchase_receipt.posted", key=number,
                workflow_id=f"work-order-{number}", payload={"source": "poll", "receipt": receipt.model_dump(mode="json")})

    # --- MES ----------------------------------------------------------------------------------------------

    @activity.defn
    @translated
    async def record_equipment_state(self, report: EquipmentStateReport) -> bool:
        async with self.tx() as s:
            return await devices.record_equipment_state(
                s, event_id=report.event_id, equipment=report.equipment, state=report.state, reason=report.reason,
                work_order=report.work_order, source="mqtt", at=report.at)

    def all(self) -> list[Any]:
        return [self.read_process, self.sample_process, self.fetch_certificate, self.skip_inspection,
                self.poll_erp, self.record_equipment_state]


class _Summary:
    def __init__(self) -> None:
        self.count = 0
        self.next_index = 0
        self.values: list[float] = []

    def add(self, value: Any) -> None:
        self.count += 1
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.values.append(float(value))

    def result(self, p: ProcessParameter, deviation: str | None) -> SampleProcessResult:
        return SampleProcessResult(parameter=p.name, samples=self.count, deviation=deviation,
                                   minimum=min(self.values) if self.values else None,
                                   maximum=max(self.values) if self.values else None)


def _stored_value(row: Any) -> Any:
    """The value a process reading row keeps: as read (raw), or its number."""
    raw = row.raw if isinstance(row.raw, dict) else {}
    return raw.get("value", row.value)


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _window(lower: float | None, upper: float | None) -> str:
    return f"{'' if lower is None else f'{lower:g}'}..{'' if upper is None else f'{upper:g}'}"


def _deviation(p: ProcessParameter, value: Any, unit: str | None, where: str) -> str:
    window = _window(p.lower, p.upper)
    return f"{p.name} {value}{' ' + unit if unit else ''} outside {window} {where}"


def judge_certificate(values: dict[str, Any], spec: Any) -> list[str]:
    """What on the certificate is out of the material's specification (empty: conforming)."""
    failures = []
    if spec.grade is not None and values.get("grade") != spec.grade:
        failures.append(f"grade {values.get('grade')!r} is not the required {spec.grade!r}")
    for lim in spec.limits:
        v = values.get(lim.name)
        if not isinstance(v, int | float) or isinstance(v, bool):
            failures.append(f"{lim.name} is not on the certificate")
        elif (lim.lower is not None and v < lim.lower) or (lim.upper is not None and v > lim.upper):
            window = _window(lim.lower, lim.upper)
            failures.append(f"{lim.name} {v}{' ' + lim.unit if lim.unit else ''} outside {window}")
    return failures


REJECTED = devices.REJECTED_ERP_EVENT


def erp_input(model: type[Any], erp: PollableErp, doc: PolledDocument) -> Any:
    """The hub's input made from a polled ERP document, or InvalidInput naming the ERP's field and what to fix."""
    try:
        return model.model_validate(erp.hub_data(doc))
    except ValidationError as exc:
        problems = [(erp.erp_field(doc, tuple(e["loc"])), e["msg"]) for e in exc.errors()]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problems = [(f"{doc.doctype}: document", f"{type(exc).__name__}: {exc}")]
    detail = "; ".join(f"{where}: {msg}" for where, msg in problems)
    raise InvalidInput(f"ERP {doc.doctype} {doc.name!r} (modified {doc.modified}) cannot be used: {detail}. "
                       "Correct it in the ERP: the next poll reads the changed document again",
                       field=problems[0][0])


def build_connector_activities(sessionmaker: async_sessionmaker[AsyncSession], *,
                               ncr_table: dict[str, Any] | None = None) -> list[Any]:
    return ConnectorActivities(sessionmaker, ncr_table=ncr_table).all()

