"""Authentication and authorization: every route is in the permission matrix or it is admin-only.

People log in (POST /api/auth/login) and send `Authorization: Bearer <token>`; systems (ERP, MES,
gauges, printers) use API tokens scoped to their role. Only the routes in PUBLIC are anonymous.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from core.errors import Forbidden, Unauthorized
from domain.audit import acting_as
from domain.identity import Principal, principal_for
from domain.spc_warnings import RECIPIENTS as SPC_WARNING_TO

PEOPLE = frozenset({"operator", "inspector", "quality_engineer", "qa_supervisor", "mrb_production",
                    "mrb_engineering", "quality_manager", "admin", "integrator", "auditor"})
QUALITY = frozenset({"inspector", "quality_engineer", "qa_supervisor", "mrb_production", "mrb_engineering",
                     "quality_manager"})
# NCR decisions and signatures: the QA supervisor and the MRB (workflows/nonconformance.py ALLOWED_ROLES decides
# which of them may take each action); the quality engineer is not among them
REVIEWERS = frozenset({"qa_supervisor", "mrb_production", "mrb_engineering", "quality_manager"})
# the quality engineer: plans, SPC warnings, CAPA work and NCR investigation (containment, root cause), no decisions
QE = frozenset({"quality_engineer"})
ADMIN = frozenset({"admin"})

# (method, path template) -> roles allowed. A route missing here is admin-only, and
# tests/test_security.py fails until it is listed: no route is added without a decision.
SYSTEMS = frozenset({"erp", "mes", "gauge", "printer"})
ENGINEERING = frozenset({"admin", "integrator"})
READERS = PEOPLE  # every person may read the floor's records; systems read what they need
PUBLIC: set[tuple[str, str]] = {
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("POST", "/api/auth/login"),
    # the public scan page: a consumer's phone has no account
    ("GET", "/01/{gtin}/10/{lot}/21/{serial}"),
    ("GET", "/01/{gtin}/21/{serial}"),
    ("GET", "/00/{sscc}"),
    ("GET", "/01/{gtin}/10/{lot}"),
}
EPCIS_READ = PEOPLE | {"erp"}
EPCIS_WRITE = frozenset({"integrator", "erp", "mes", "admin"})
PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    # identity
    ("POST", "/api/auth/logout"): PEOPLE,
    ("GET", "/api/auth/me"): PEOPLE | SYSTEMS,
    ("GET", "/api/users"): ADMIN | {"auditor"},
    ("POST", "/api/users"): ADMIN,
    ("POST", "/api/tokens"): ADMIN,
    # user administration: a role change or deactivation ends the user's sessions (domain/identity.py)
    ("PATCH", "/api/users/{username}"): ADMIN,
    ("POST", "/api/users/{username}/password"): ADMIN,
    ("POST", "/api/auth/password"): PEOPLE,  # one's own password; system tokens have none (the route refuses)
    ("GET", "/api/tokens"): ADMIN | {"auditor"},
    ("DELETE", "/api/tokens/{token_id}"): ADMIN,
    # ERP
    ("POST", "/api/erp/events"): frozenset({"erp", "admin"}),  # or a valid webhook signature
    ("GET", "/api/erp/events"): ENGINEERING | {"auditor"},
    # work orders and the floor
    ("GET", "/api/work-orders"): READERS | {"mes", "erp"},
    ("GET", "/api/work-orders/{number}"): READERS | {"mes", "erp"},
    ("GET", "/api/work-orders/{number}/history"): frozenset({"admin", "auditor", "quality_manager", "integrator"}),
    ("POST", "/api/work-orders/{number}/operations"): frozenset({"operator", "mes"}),
    ("POST", "/api/work-orders/{number}/equipment-states"): frozenset({"operator", "mes"}),
    ("GET", "/api/mes/rejected"): ENGINEERING | {"auditor", "quality_manager", "mes"},
    ("GET", "/api/inspections"): READERS | {"gauge"},
    ("GET", "/api/inspections/{number}"): READERS | {"gauge"},
    ("POST", "/api/inspections/{number}/results"): frozenset({"inspector", "gauge"}),
    ("POST", "/api/inspections/{number}/results/csv"): frozenset({"inspector", "gauge"}),
    ("POST", "/api/inspections/{number}/read-gauges"): frozenset({"inspector", "gauge"}),
    # photos of visual characteristics (an inspector's camera, or a vision system as a gauge)
    ("POST", "/api/inspections/{number}/characteristics/{characteristic}/photos"): frozenset({"inspector", "gauge"}),
    ("GET", "/api/inspections/{number}/photos"): READERS | {"gauge"},
    ("GET", "/api/inspections/{number}/photos/{attachment_id}"): READERS | {"gauge"},
    # progress of a running operation (patrol inspections every N units) and shipment requests
    ("POST", "/api/work-orders/{number}/operations/{seq}/progress"): frozenset({"operator", "mes"}),
    ("POST", "/api/work-orders/{number}/shipment"): frozenset({"erp", "operator"}),
    # retry after a refusal (the ERP refused a document, the shipment was refused): admins, audited
    ("POST", "/api/work-orders/{number}/retry"): ADMIN,
    # inspection plans, acceptance sampling (ISO 2859-1) and SPC
    ("POST", "/api/quality/plans"): frozenset({"quality_manager", "qa_supervisor", "admin"}) | QE,
    ("GET", "/api/quality/plans/{item}/{operation}"): READERS | {"gauge", "mes"},
    ("GET", "/api/quality/sampling"): READERS | {"gauge"},
    ("POST", "/api/quality/sampling/results"): frozenset({"inspector", "gauge", "quality_manager"}),
    # the responsible authority accepts the supplier's corrective action (ISO 2859-1 9.4)
    ("POST", "/api/quality/sampling/resume"): frozenset({"quality_manager"}),
    # ... and considers reduced inspection desirable (ISO 2859-1 9.3.3; ANSI/ASQ Z1.4 Table II-C plans)
    ("POST", "/api/quality/sampling/reduce"): frozenset({"quality_manager"}),
    ("GET", "/api/quality/spc"): READERS,
    # SPC warnings go to the quality engineer, and to the QA supervisor and quality manager (domain/spc_warnings.py)
    ("GET", "/api/quality/warnings"): frozenset(SPC_WARNING_TO) | {"auditor"},
    ("POST", "/api/quality/warnings/{warning_id}/acknowledge"): frozenset(SPC_WARNING_TO),
    ("GET", "/api/ncrs"): READERS,
    ("GET", "/api/ncrs/{number}"): READERS,
    ("POST", "/api/ncrs/{number}/decisions"): REVIEWERS,
    # NCR review content (classification, containment, root cause) and the defect code catalogue
    ("PATCH", "/api/ncrs/{number}"): REVIEWERS,
    # (the quality engineer investigates: containment and root cause; classifying, which re-times the NCR's
    # escalation, stays with the reviewers)
    ("POST", "/api/ncrs/{number}/containment"): REVIEWERS | QE,
    ("PATCH", "/api/ncrs/{number}/containment/{seq}"): REVIEWERS | QE,
    ("PATCH", "/api/ncrs/{number}/root-cause"): REVIEWERS | QE,
    ("GET", "/api/defect-codes"): READERS | {"gauge", "mes"},
    ("POST", "/api/defect-codes"): frozenset({"quality_manager"}),
    # corrective and preventive actions; closing (the effectiveness check) is the quality manager's signature
    ("GET", "/api/capas"): READERS,
    ("POST", "/api/capas"): frozenset({"quality_manager", "qa_supervisor"}) | QE,
    ("GET", "/api/capas/{number}"): READERS,
    ("POST", "/api/capas/{number}/actions"): frozenset({"quality_manager", "qa_supervisor"}) | QE,
    ("PATCH", "/api/capas/{number}/actions/{seq}"): frozenset({"quality_manager", "qa_supervisor"}) | QE,
    ("POST", "/api/capas/{number}/close"): frozenset({"quality_manager"}),
    # supplier returns (return_to_supplier dispositions): the quality roles, the MRB, auditors
    ("GET", "/api/supplier-returns"): QUALITY | {"auditor", "admin"},
    ("GET", "/api/supplier-returns/{number}"): QUALITY | {"auditor", "admin"},
    # trace and recall
    ("GET", "/api/trace/backward/{code}"): READERS,
    ("GET", "/api/trace/forward"): READERS,
    ("GET", "/api/trace/forward/{lot}"): READERS,
    ("POST", "/api/recalls"): frozenset({"quality_manager"}),
    ("GET", "/api/recalls"): READERS,
    ("GET", "/api/recalls/{number}"): READERS,
    ("POST", "/api/recalls/{number}/acknowledgements"): frozenset({"quality_manager", "qa_supervisor"}),
    ("POST", "/api/recalls/{number}/decisions"): REVIEWERS,
    ("POST", "/api/recalls/{number}/containers/{code}/decisions"): REVIEWERS,
    # connectors and endpoints (integrators)
    ("GET", "/api/connectors"): ENGINEERING,
    ("GET", "/api/endpoints"): ENGINEERING | {"auditor"},
    ("POST", "/api/endpoints"): ENGINEERING,
    ("GET", "/api/endpoints/{name}"): ENGINEERING | {"auditor"},
    ("PUT", "/api/endpoints/{name}"): ENGINEERING,
    ("DELETE", "/api/endpoints/{name}"): ENGINEERING,
    ("POST", "/api/endpoints/{name}/check"): ENGINEERING,
    ("GET", "/api/endpoints/{name}/discover"): ENGINEERING,
    ("GET", "/api/endpoints/{name}/read"): ENGINEERING | {"quality_manager"},
    ("GET", "/api/endpoints/{name}/rejected"): ENGINEERING | {"auditor"},
    # codes, labels, packing, offline pools
    ("POST", "/api/codes/rules"): ENGINEERING | {"quality_manager"},
    ("GET", "/api/codes/rules/{item}/{level}"): READERS | {"printer"},
    ("POST", "/api/codes/blocks"): ENGINEERING | {"printer", "mes"},
    ("GET", "/api/codes/blocks/{block_id}"): READERS | {"printer"},
    ("GET", "/api/codes/blocks/{block_id}/codes/{index}"): READERS | {"printer"},
    ("GET", "/api/codes/blocks/{block_id}/export"): READERS | {"printer"},
    ("GET", "/api/codes/blocks/{block_id}/codes/{index}/qr.{fmt}"): READERS | {"printer"},
    ("GET", "/api/codes/blocks/{block_id}/labels.pdf"): READERS | {"printer"},
    ("GET", "/api/codes/blocks/{block_id}/labels.zpl"): READERS | {"printer"},
    ("GET", "/api/codes/lookup"): READERS | {"printer", "mes"},
    ("POST", "/api/codes/pack"): frozenset({"operator", "mes"}),
    ("POST", "/api/codes/unpack"): frozenset({"operator", "mes"}),
    ("GET", "/api/codes/contents"): READERS | {"mes", "erp", "printer"},
    ("GET", "/api/codes/history"): READERS | {"mes", "erp"},
    ("POST", "/api/codes/containers/ship"): frozenset({"operator", "erp"}),
    ("POST", "/api/codes/pools"): ENGINEERING | {"printer"},
    ("POST", "/api/codes/pools/{number}/revoke"): ENGINEERING | {"quality_manager"},
    ("POST", "/api/codes/pools/{number}/uploads"): frozenset({"printer", "mes", "operator"}),
    ("POST", "/api/codes/pools/{number}/reconcile"): ENGINEERING | {"quality_manager"},
    ("GET", "/api/codes/alerts"): READERS,
    # item master data: everyone reads it; a correction (a wrong GTIN) is the quality manager's or an admin's
    ("GET", "/api/items"): READERS,
    ("GET", "/api/items/{code}"): READERS,
    ("PATCH", "/api/items/{code}"): frozenset({"admin", "quality_manager"}),
    # EPCIS 2.0 REST interface
    ("GET", "/epcis"): EPCIS_READ,
    ("GET", "/epcis/capture"): EPCIS_WRITE | {"auditor"},
    ("POST", "/epcis/capture"): EPCIS_WRITE,
    ("OPTIONS", "/epcis/capture"): EPCIS_WRITE,
    ("GET", "/epcis/capture/{capture_id}"): EPCIS_WRITE | {"auditor"},
    ("GET", "/epcis/events"): EPCIS_READ,
    ("POST", "/epcis/events"): EPCIS_WRITE,
    ("GET", "/epcis/events/{event_id}"): EPCIS_READ,
    ("GET", "/epcis/eventTypes"): EPCIS_READ,
    ("GET", "/epcis/queries"): EPCIS_READ,
    ("POST", "/epcis/queries"): ENGINEERING | {"quality_manager"},
    ("GET", "/epcis/queries/{name}"): EPCIS_READ,
    ("DELETE", "/epcis/queries/{name}"): ENGINEERING | {"quality_manager"},
    ("GET", "/epcis/queries/{name}/events"): EPCIS_READ,
    ("POST", "/epcis/queries/{name}/subscriptions"): ENGINEERING | {"quality_manager"},
    ("GET", "/epcis/queries/{name}/subscriptions"): EPCIS_READ,
    ("GET", "/epcis/queries/{name}/subscriptions/{subscription_id}"): EPCIS_READ,
    ("DELETE", "/epcis/queries/{name}/subscriptions/{subscription_id}"): ENGINEERING | {"quality_manager"},
}
# ERP webhooks authenticate by their HMAC signature instead of a bearer token (api/routes/erp.py checks it)
SIGNED: set[tuple[str, str]] = {("POST", "/api/erp/events")}
SIGNATURE_HEADER = "x-frappe-webhook-signature"


_CONVERTER = re.compile(r"\{(\w+):\w+\}")


def roles_for(method: str, path: str) -> frozenset[str] | None:
    """None for a public route; otherwise the roles that may call it."""
    path = _CONVERTER.sub(r"{\1}", path)  # "/{code:path}" is listed as "/{code}", as OpenAPI shows it
    if (method, path) in PUBLIC:
        return None
    return PERMISSIONS.get((method, path), ADMIN)


async def authenticate(request: Request) -> Principal | None:
    """App-wide dependency: resolves the bearer token and checks the route's roles."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    roles = roles_for(request.method, path)
    if roles is None:
        return None
    if (request.method, _CONVERTER.sub(r"{\1}", path)) in SIGNED and SIGNATURE_HEADER in request.headers:
        request.state.signed_webhook = True  # the route verifies the signature before reading the body
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send `Authorization: Bearer <token>`: log in at POST /api/auth/login")
    # a read-only session: checking a token must never queue behind writers (SQLite's write lock)
    factory = getattr(request.app.state, "read_sessionmaker", None) or request.app.state.sessionmaker
    async with factory() as session:
        principal = await principal_for(session, token.strip())
    if not principal.has(*roles):
        raise Forbidden(f"{request.method} {path} needs one of the roles {sorted(roles)}; "
                        f"{principal.subject} has {sorted(principal.roles)}")
    request.state.principal = principal
    acting_as(principal.subject)  # audit entries of this request name who did it
    return principal


def current_principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise Unauthorized("this route needs a logged-in user or an API token")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
