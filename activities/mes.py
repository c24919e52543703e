"""The MES into the work orders: operation reports and equipment states arriving over MQTT become
signals to the right WorkOrderWorkflow (`work-order-<number>`), and what a work order consumed goes to
the ERP's stock entry.

Nothing is lost or doubled:
- The bridge subscribes with QoS 1 under a fixed client id with `clean_session false`, so the broker keeps
  what the MES publishes while the hub is down and delivers it on reconnect.
- A message is acknowledged (PUBACK) only after it was taken over: the signal was delivered, or it was
  recorded as rejected (table `mes_rejected_message`, GET /api/mes/rejected) and logged. Until then a
  database or Temporal outage is waited out; a message not acknowledged when the bridge stops is
  delivered again.
- Each message is validated with the pydantic model the HTTP routes use (OperationReport,
  EquipmentStateReport). An operation report recorded before (same report_id) is acknowledged and
  dropped; one signalled but not yet recorded is deduplicated by the workflow (`seen_reports`).
  An equipment state is signalled before it is recorded, so a state found recorded was signalled.

Where it runs: inside the worker process (worker.py). The worker already holds the settings, the
database engine and the Temporal client, the workflows it signals are queried from the same process, and
one process fewer has to be supervised by `tracehub up`; the bridge rescans the endpoints every few
seconds, so an MQTT endpoint added later (the demo plant's) is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.base import BackgroundLoop, TransactionalActivities
from activities.errors import translated
from activities.models import OperationReport
from activities.models_connectors import EquipmentStateReport
from connectors.errors import ConnectorConfigError, ConnectorError
from connectors.mqtt import MqttConnector
from connectors.mqtt.connector import Message, MqttConfig
from core.errors import Conflict, InvalidInput
from core.values import non_finite_at
from domain import devices, mes, production
from domain.endpoints import list_endpoints

log = logging.getLogger("tracehub.mes")

# the configured topic names (MqttConfig.topics[].name) the bridge listens to, and what arrives on them
MES_TOPICS = {"operation_reports": "operation_report", "equipment_states": "equipment_state"}
QUERY_TIMEOUT = timedelta(seconds=10)


class Rejected(Exception):
    """The message cannot be taken, for a reason the MES has to fix: it is recorded, not retried."""

    def __init__(self, reason: str, *, field: str | None = None, work_order: str | None = None,
                 message_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.field, self.work_order, self.message_id = reason, field, work_order, message_id


def _invalid(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """What is wrong, naming each field (e.g. `good_quantity: Input should be ...`), and the first field."""
    problems = []
    for e in exc.errors():
        where = prefix + (".".join(str(p) for p in e["loc"]) or "body")
        problems.append((where, e["msg"]))
    return "; ".join(f"{w}: {m}" for w, m in problems), problems[0][0]


def _transient(exc: BaseException) -> bool:
    """An outage the bridge waits out (the message is kept, not acknowledged)."""
    if isinstance(exc, RPCError):
        return exc.status != RPCStatusCode.NOT_FOUND
    return isinstance(exc, (OperationalError, DBAPIError, OSError, TimeoutError, WorkflowQueryFailedError,
                            ConnectorError))


MES_ACTOR = "mes"  # the audit actor of what the MES bridge delivers (it has no login of its own)


# NaN / Infinity: Python's JSON parser reads them as numbers, Temporal's JSON cannot carry them (core/values.py)
_NON_FINITE = "{}: NaN and Infinity are not numbers JSON allows: send a finite number"


class MesIntake:
    """Validates one MES message and delivers it to its work order's workflow (transport aside)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], client: Client) -> None:
        self.sm = sessionmaker
        self.client = client

    async def operation_report(self, body: dict[str, Any]) -> str:
        """`body`: an OperationReport plus `work_order`. Returns signalled | duplicate; raises Rejected."""
        body = dict(body)
        number = body.pop("work_order", None)
        rid = body.get("report_id") if isinstance(body.get("report_id"), str) else None
        if not isinstance(number, str) or not number:
            raise Rejected("work_order: missing or not a string; name the work order the report is for",
                           field="work_order", message_id=rid)
        if (bad := non_finite_at(body)) is not None:
            raise Rejected(_NON_FINITE.format(bad), field=bad, work_order=number, message_id=rid)
        try:
            report = OperationReport.model_validate(body)
        except ValidationError as exc:
            reason, fld = _invalid(exc)
            raise Rejected(reason, field=fld, work_order=number, message_id=rid) from None
        if report.reported_by is not None:
            raise Rejected("reported_by: the hub sets it (the audit trail's actor); leave it out and name who ran "
                           "the operation in `operator`", field="reported_by", work_order=number, message_id=rid)
        # the MES bridge is who reports (the audit entry's actor); the operator it names is data
        report = report.model_copy(update={"reported_by": MES_ACTOR})
        async with self.sm() as s:
            done = await mes.report_recorded(s, report.report_id)
            if done == number:
                return "duplicate"
            if done is not None:
                raise Rejected(f"report_id: {report.report_id} was recorded for work order {done}, not {number}: "
                               "give each report its own id", field="report_id", work_order=number,
                               message_id=report.report_id)
            wo = await production.find_work_order(s, number)
            if wo is None:
                raise Rejected(f"work_order: no work order {number!r} in the hub: check the number (the ERP "
                               "releases work orders)", field="work_order", work_order=number,
                               message_id=report.report_id)
            seqs = [op["seq"] for op in wo.routing]
            if report.seq not in seqs:
                raise Rejected(f"seq: operation {report.seq} is not in the routing of {number} (routing: {seqs})",
                               field="seq", work_order=number, message_id=report.report_id)
            try:
                await production.check_consumable(s, [(c.lot, c.quantity) for c in report.consumed])
            except (InvalidInput, Conflict) as exc:
                raise Rejected(exc.message, field="consumed", work_order=number,
                               message_id=report.report_id) from None
            wf_id = wo.workflow_id
        handle = self.client.get_workflow_handle(wf_id)
        st = await self._status(handle, number, report.report_id)
        expected, stage = st.get("expected_operation"), st.get("stage")
        # a report ahead of the workflow (op 20 while op 10 is being recorded, or during intake) is kept
        # by the workflow until it gets there; one for an operation it has passed would never be used
        if st.get("result") is not None or not (
                stage == "material_intake" or (expected is not None and report.seq >= expected)):
            now = (f"it waits for operation {expected}" if expected is not None
                   else f"it is in stage {stage} and waits for no operation report")
            raise Rejected(f"seq: work order {number} is not waiting for operation {report.seq}: {now}",
                           field="seq", work_order=number, message_id=report.report_id)
        await self._signal(handle, "report_operation", report, number, report.report_id)
        return "signalled"

    async def equipment_state(self, body: dict[str, Any], *, source: str = "mqtt") -> str:
        """`body`: an EquipmentStateReport (its work_order routes it). Returns signalled | recorded | duplicate."""
        eid = body.get("event_id") if isinstance(body.get("event_id"), str) else None
        if (bad := non_finite_at(body)) is not None:
            wo = body.get("work_order")
            raise Rejected(_NON_FINITE.format(bad), field=bad, work_order=wo if isinstance(wo, str) else None,
                           message_id=eid)
        try:
            report = EquipmentStateReport.model_validate(body)
        except ValidationError as exc:
            reason, fld = _invalid(exc)
            wo = body.get("work_order")
            raise Rejected(reason, field=fld, work_order=wo if isinstance(wo, str) else None,
                           message_id=eid) from None
        return await deliver_equipment_state(self.sm, self.client, report, source=source)

    async def _status(self, handle: WorkflowHandle[Any, Any], number: str, rid: str) -> dict[str, Any]:
        try:
            st = await handle.query("status", rpc_timeout=QUERY_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise Rejected(f"work_order: no workflow runs for work order {number}", field="work_order",
                               work_order=number, message_id=rid) from None
            raise
        return st if isinstance(st, dict) else json.loads(json.dumps(st, default=str))

    async def _signal(self, handle: WorkflowHandle[Any, Any], signal: str, arg: BaseModel, number: str,
                      rid: str) -> None:
        try:
            await handle.signal(signal, arg)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # completed (or terminated) meanwhile
                raise Rejected(f"work_order: work order {number} is not running any more ({exc.message})",
                               field="work_order", work_order=number, message_id=rid) from None
            raise


async def deliver_equipment_state(sm: async_sessionmaker[AsyncSession], client: Client,
                                  report: EquipmentStateReport, *, source: str) -> str:
    """Signal the state to its work order (when it names one) and record it; a state recorded before was
    signalled before (the signal comes first). Returns signalled | recorded | duplicate; raises Rejected
    for an unknown work order."""
    async with sm() as s:
        if await devices.equipment_state_seen(s, report.event_id):
            return "duplicate"
        wf_id = None
        if report.work_order:
            wo = await production.find_work_order(s, report.work_order)
            if wo is None:
                raise Rejected(f"work_order: no work order {report.work_order!r} in the hub: check the number",
                               field="work_order", work_order=report.work_order, message_id=report.event_id)
            wf_id = wo.workflow_id
    outcome = "recorded"
    if wf_id is not None:
        try:
            await client.get_workflow_handle(wf_id).signal("equipment_state", report)
            outcome = "signalled"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # the work order has finished: the state is still the equipment's history
    async with sm() as s, s.begin():
        await devices.record_equipment_state(
            s, event_id=report.event_id, equipment=report.equipment, state=report.state, reason=report.reason,
            work_order=report.work_order, source=source, at=report.at)
    return outcome


class MesBridge(BackgroundLoop):
    """Listens to every MQTT endpoint with MES topics and delivers their messages (see the module doc).

    `async with MesBridge(...)` runs it in the background; `endpoints` restricts it to those names."""

    task_name = "mes-bridge"

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], client: Client, *,
                 endpoints: list[str] | None = None, rescan_s: float = 5.0, retry_max_s: float = 10.0) -> None:
        self.sm = sessionmaker
        self.intake = MesIntake(sessionmaker, client)
        self.only = set(endpoints) if endpoints is not None else None
        self.rescan_s = rescan_s
        self.retry_max_s = retry_max_s
        self.ready: dict[str, asyncio.Event] = {}
        self.outcomes: dict[str, int] = {}
        self._listeners: dict[str, tuple[str, asyncio.Task[None]]] = {}

    def is_ready(self, endpoint: str) -> asyncio.Event:
        """Set while the bridge is subscribed on the endpoint's broker."""
        return self.ready.setdefault(endpoint, asyncio.Event())

    async def run(self) -> None:
        try:
            while True:
                try:
                    wanted = await self._endpoints()
                except Exception as exc:  # noqa: BLE001 - the database may be starting; keep what runs
                    log.warning("MES bridge: cannot list MQTT endpoints (%s); trying again", exc)
                    wanted = None
                if wanted is not None:
                    self._reconcile(wanted)
                await asyncio.sleep(self.rescan_s)
        finally:
            for _key, task in self._listeners.values():
                task.cancel()
            for _key, task in self._listeners.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._listeners.clear()

    async def _endpoints(self) -> dict[str, dict[str, Any]]:
        async with self.sm() as s:
            rows = await list_endpoints(s, kind="mqtt")
        out = {}
        for ep in rows:
            if self.only is not None and ep.name not in self.only:
                continue
            topics = ep.config.get("topics") or []
            if any(isinstance(t, dict) and t.get("name") in MES_TOPICS for t in topics):
                out[ep.name] = ep.config
        return out

    def _reconcile(self, wanted: dict[str, dict[str, Any]]) -> None:
        for name in list(self._listeners):
            key, task = self._listeners[name]
            if name not in wanted or key != json.dumps(wanted[name], sort_keys=True) or task.done():
                task.cancel()
                del self._listeners[name]
        for name, config in wanted.items():
            if name not in self._listeners:
                task = asyncio.create_task(self._listen(name, config), name=f"mes-bridge-{name}")
                self._listeners[name] = (json.dumps(config, sort_keys=True), task)

    @staticmethod
    def session_config(name: str, config: dict[str, Any]) -> MqttConfig:
        """The endpoint's config as the bridge connects: a fixed client id (the endpoint's, or one from its
        name), a persistent session, QoS at least 1, and only the MES topics."""
        cfg = MqttConnector.validate_config(config)
        assert isinstance(cfg, MqttConfig)
        topics = [t.model_copy(update={"qos": max(1, t.qos)}) for t in cfg.topics if t.name in MES_TOPICS]
        return cfg.model_copy(update={"client_id": cfg.client_id or f"tracehub-mes-{name}", "clean_session": False,
                                      "topics": topics})

    async def _listen(self, name: str, config: dict[str, Any]) -> None:
        ready = self.is_ready(name)
        delay = 0.5
        while True:
            try:
                cfg = self.session_config(name, config)
                async with MqttConnector(cfg, manual_ack=True) as conn:
                    await conn.subscribe()
                    ready.set()
                    log.info("MES bridge: %s subscribed to %s as %s", name, [t.filter for t in cfg.topics],
                             cfg.client_id)
                    delay = 0.5
                    async for msg in conn.messages():
                        await self._take(name, conn, msg)
            except ConnectorConfigError as exc:
                log.error("MES bridge: endpoint %s: %s (fix the endpoint; it is tried again)", name, exc.message)
                delay = self.retry_max_s
            except ConnectorError as exc:
                log.warning("MES bridge: endpoint %s: %s", name, exc.message)
            finally:
                ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _take(self, name: str, conn: MqttConnector, msg: Message) -> None:
        """Deliver or record one message, waiting out outages; then acknowledge it."""
        delay = 0.2
        while True:
            try:
                outcome = await self.handle(name, msg)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # sorted below: an outage is waited out
                if not _transient(exc):
                    log.exception("MES bridge: message on %s could not be taken", msg.topic)
                    outcome = await self._reject(name, msg, Rejected(
                        f"the hub failed to take this message ({type(exc).__name__}: {exc}); report it"))
                    break
                log.warning("MES bridge: message on %s not taken yet (%s: %s); retrying in %.1f s", msg.topic,
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        await conn.ack(msg)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def handle(self, endpoint: str, msg: Message) -> str:
        """signalled | duplicate | recorded | rejected; raises only for an outage (retry, do not ack)."""
        try:
            if msg.name not in MES_TOPICS:
                raise Rejected(f"topic: {msg.topic} is not one of the endpoint's MES topics {sorted(MES_TOPICS)}",
                               field="topic")
            if msg.raw is not None or not isinstance(msg.payload, dict):
                raise Rejected("body: not a JSON object; send the report as JSON, e.g. {\"work_order\": ...}",
                               field="body")
            if MES_TOPICS[msg.name] == "operation_report":
                outcome = await self.intake.operation_report(msg.payload)
            else:
                outcome = await self.intake.equipment_state(msg.payload, source="mqtt")
        except Rejected as rej:
            return await self._reject(endpoint, msg, rej)
        log.info("MES bridge: %s on %s: %s", MES_TOPICS[msg.name or ""], msg.topic, outcome)
        return outcome

    async def _reject(self, endpoint: str, msg: Message, rej: Rejected) -> str:
        body: Any = msg.raw if msg.raw is not None else msg.payload
        async with self.sm() as s, s.begin():
            row = await mes.record_rejection(
                s, source="mqtt", endpoint=endpoint, topic=msg.topic, kind=MES_TOPICS.get(msg.name or "", "unknown"),
                body=body, reason=rej.reason, field=rej.field, work_order=rej.work_order,
                message_id=rej.message_id)
        log.warning("MES bridge: rejected a message on %s (endpoint %s, rejection %d): %s", msg.topic, endpoint,
                    row.id, rej.reason)
        return "rejected"


class MesActivities(TransactionalActivities):
    """What the work order tells the ERP about the MES's reports."""

    @activity.defn
    @translated
    async def work_order_consumption(self, work_order: str) -> list[dict[str, Any]]:
        """The input lots the work order's operations consumed, with quantities (for the stock entry)."""
        async with self.tx() as s:
            return await mes.consumption(s, work_order)

    def all(self) -> list[Any]:
        return [self.work_order_consumption]
