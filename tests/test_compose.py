"""Static checks of the production deployment files (docker-compose.yml, Dockerfile, PostgreSQL init SQL).

Nothing is started: the compose file is parsed with PyYAML and its structure is checked against what the
stack needs to boot in the right order (PostgreSQL -> Temporal schema job -> temporalio/server -> UI;
PostgreSQL -> hub-migrate -> hub-api / hub-worker).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

POSTGRES = "postgresql"
SCHEMA_JOB = "temporal-admin-tools"
NAMESPACE_JOB = "temporal-create-namespace"
TEMPORAL = "temporal"
TEMPORAL_UI = "temporal-ui"
HUB_MIGRATE = "hub-migrate"
HUB_API = "hub-api"
HUB_WORKER = "hub-worker"
HUB_SERVICES = (HUB_MIGRATE, HUB_API, HUB_WORKER)
REQUIRED_SERVICES = (POSTGRES, SCHEMA_JOB, TEMPORAL, TEMPORAL_UI, *HUB_SERVICES)

HUB_IMAGE_REPO = "tracehub"
VERSION_TAG = re.compile(r"^v?\d+(\.\d+)*([.-][0-9A-Za-z.-]+)?$")


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml does not parse to a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml has no 'services' mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _service(services: dict, name: str) -> dict:
    assert name in services, f"service {name!r} missing from docker-compose.yml (have: {sorted(services)})"
    svc = services[name]
    assert isinstance(svc, dict), f"service {name!r} is not a mapping"
    return svc


def _split_image(image: str) -> tuple[str, str | None]:
    """'registry:5000/org/name:tag' -> ('registry:5000/org/name', 'tag'); no tag -> (image, None)."""
    assert "@" not in image or image.split("@", 1)[1].startswith("sha256:"), f"odd image reference {image!r}"
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, None


def _env(svc_name: str, svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else ""
        return out
    assert isinstance(env, dict), f"{svc_name}: 'environment' must be a mapping or a list"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _argv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _depends_on(svc_name: str, svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):  # short form means service_started
        return {d: "service_started" for d in deps}
    assert isinstance(deps, dict), f"{svc_name}: 'depends_on' must be a list or a mapping"
    return {name: (cfg or {}).get("condition", "service_started") for name, cfg in deps.items()}


def _assert_depends(services: dict, svc_name: str, dep: str, condition: str) -> None:
    deps = _depends_on(svc_name, _service(services, svc_name))
    assert dep in deps, f"{svc_name} must depend on {dep} (condition {condition}); depends_on = {deps}"
    assert deps[dep] == condition, (
        f"{svc_name} depends on {dep} with condition {deps[dep]!r}, expected {condition!r}"
    )


def _published_ports(svc_name: str, svc: dict) -> dict[int, int]:
    """Map published host port -> container port."""
    out: dict[int, int] = {}
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                out[int(str(entry["published"]))] = int(str(entry["target"]))
            continue
        spec = str(entry).split("/", 1)[0]
        parts = spec.rsplit(":", 2) if spec.count(":") >= 2 else spec.split(":")
        if len(parts) == 1:
            continue  # container port only: published on a random host port
        out[int(parts[-2])] = int(parts[-1])
    return out


def _build_context_and_dockerfile(svc_name: str, svc: dict) -> tuple[Path, Path]:
    build = svc.get("build")
    assert build is not None, f"{svc_name} must be built from the repo Dockerfile ('build: .')"
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        assert isinstance(build, dict), f"{svc_name}: 'build' must be a string or a mapping"
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return (REPO_ROOT / context).resolve(), (REPO_ROOT / context / dockerfile).resolve()


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    out = []
    for line in logical:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return [str(a) for a in json.loads(args)]
    return shlex.split(args)


# ---------------------------------------------------------------- services & images


def test_required_services_exist(services: dict) -> None:
    missing = [s for s in REQUIRED_SERVICES if s not in services]
    assert not missing, f"docker-compose.yml is missing services {missing} (have: {sorted(services)})"


def test_every_service_has_an_image_or_a_build(services: dict) -> None:
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"service {name!r} has neither 'image' nor 'build'"


def test_images_are_pinned(services: dict) -> None:
    for name, svc in services.items():
        image = svc.get("image")
        if not image:
            continue
        assert "${" not in image, f"{name}: image {image!r} uses variable interpolation; pin a concrete tag"
        repo, tag = _split_image(image)
        if repo == HUB_IMAGE_REPO:
            assert svc.get("build") is not None, (
                f"{name}: {image!r} is our own image and must be built here ('build: .'), not pulled"
            )
            continue
        assert tag is not None, f"{name}: image {image!r} has no tag (implicitly :latest); pin a version"
        assert tag != "latest", f"{name}: image {image!r} uses :latest; pin a concrete version"


def _assert_versioned(services: dict, svc_name: str, expected_repo: str) -> None:
    image = _service(services, svc_name).get("image", "")
    repo, tag = _split_image(image)
    assert repo == expected_repo, f"{svc_name}: image is {image!r}, expected {expected_repo}:<version>"
    assert tag and VERSION_TAG.match(tag), f"{svc_name}: image {image!r} is not pinned to a version tag"


def test_temporal_images(services: dict) -> None:
    _assert_versioned(services, TEMPORAL, "temporalio/server")
    _assert_versioned(services, TEMPORAL_UI, "temporalio/ui")
    _assert_versioned(services, SCHEMA_JOB, "temporalio/admin-tools")
    for name, svc in services.items():
        assert "auto-setup" not in str(svc.get("image", "")), (
            f"{name}: uses the deprecated temporalio/auto-setup image; use temporalio/server + a schema job"
        )


def test_admin_tools_and_server_versions_match(services: dict) -> None:
    _, server_tag = _split_image(_service(services, TEMPORAL)["image"])
    for name in (SCHEMA_JOB, NAMESPACE_JOB):
        if name in services:
            _, tools_tag = _split_image(services[name]["image"])
            assert tools_tag == server_tag, (
                f"{name} runs admin-tools {tools_tag} but the server is {server_tag}; "
                "the schema must match the server release"
            )


# ---------------------------------------------------------------- boot order


def test_temporal_waits_for_schema_job(services: dict) -> None:
    _assert_depends(services, TEMPORAL, SCHEMA_JOB, "service_completed_successfully")


def test_schema_job_and_migrate_wait_for_healthy_postgres(services: dict) -> None:
    _assert_depends(services, SCHEMA_JOB, POSTGRES, "service_healthy")
    _assert_depends(services, HUB_MIGRATE, POSTGRES, "service_healthy")


def test_api_and_worker_wait_for_migrations_and_temporal(services: dict) -> None:
    for name in (HUB_API, HUB_WORKER):
        _assert_depends(services, name, HUB_MIGRATE, "service_completed_successfully")
        deps = _depends_on(name, services[name])
        assert TEMPORAL in deps, f"{name} must depend on {TEMPORAL}; depends_on = {deps}"
        assert deps[TEMPORAL] in ("service_started", "service_healthy"), (
            f"{name} depends on {TEMPORAL} with unexpected condition {deps[TEMPORAL]!r}"
        )


def test_namespace_job_if_present(services: dict) -> None:
    if NAMESPACE_JOB not in services:
        pytest.skip(f"no {NAMESPACE_JOB} service")
    _assert_depends(services, NAMESPACE_JOB, TEMPORAL, "service_healthy")
    for name in (HUB_API, HUB_WORKER):
        _assert_depends(services, name, NAMESPACE_JOB, "service_completed_successfully")
    job = services[NAMESPACE_JOB]
    script = " ".join(_argv(job.get("entrypoint")) + _argv(job.get("command")))
    assert "namespace create" in script, f"{NAMESPACE_JOB} does not create a namespace"


def test_healthchecks_exist_where_depended_on(services: dict) -> None:
    for name, svc in services.items():
        for dep, cond in _depends_on(name, svc).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if cond == "service_healthy":
                hc = services[dep].get("healthcheck")
                built = services[dep].get("build") is not None
                assert (hc and not hc.get("disable")) or built, (
                    f"{name} waits for {dep} to be healthy but {dep} has no healthcheck"
                )


def test_postgres_service(compose: dict, services: dict) -> None:
    pg = _service(services, POSTGRES)
    repo, tag = _split_image(pg.get("image", ""))
    assert repo == "postgres" and tag and tag != "latest", f"{POSTGRES}: image {pg.get('image')!r} not pinned"
    test = " ".join(_argv(pg.get("healthcheck", {}).get("test")))
    assert "pg_isready" in test, f"{POSTGRES}: healthcheck should use pg_isready, got {test!r}"
    named = set((compose.get("volumes") or {}).keys())
    data_mounts = [v for v in pg.get("volumes") or [] if isinstance(v, str) and v.split(":")[0] in named]
    assert any(":/var/lib/postgresql" in v for v in data_mounts), (
        f"{POSTGRES}: data directory should be on a named volume declared under top-level 'volumes' "
        f"(volumes: {pg.get('volumes')}, declared: {sorted(named)})"
    )


def test_schema_job_sets_up_both_temporal_databases(services: dict) -> None:
    job = _service(services, SCHEMA_JOB)
    script = " ".join(_argv(job.get("entrypoint")) + _argv(job.get("command")))
    assert "temporal-sql-tool" in script, f"{SCHEMA_JOB}: does not run temporal-sql-tool"
    for db in ("temporal", "temporal_visibility"):
        assert re.search(rf"--db[ =]{db}\b", script), f"{SCHEMA_JOB}: does not set up the {db!r} database"
    assert "update-schema" in script, f"{SCHEMA_JOB}: never runs update-schema"
    env = _env(SCHEMA_JOB, job)
    assert env.get("POSTGRES_SEEDS") == POSTGRES or f"--ep {POSTGRES}" in script, (
        f"{SCHEMA_JOB}: does not point temporal-sql-tool at the {POSTGRES} service"
    )


def test_temporal_server_uses_postgres(services: dict) -> None:
    env = _env(TEMPORAL, _service(services, TEMPORAL))
    assert env.get("DB") == "postgres12", f"{TEMPORAL}: DB should be postgres12, got {env.get('DB')!r}"
    assert env.get("POSTGRES_SEEDS") == POSTGRES, (
        f"{TEMPORAL}: POSTGRES_SEEDS should be {POSTGRES!r}, got {env.get('POSTGRES_SEEDS')!r}"
    )
    assert env.get("BIND_ON_IP") == "0.0.0.0", f"{TEMPORAL}: BIND_ON_IP must be 0.0.0.0 to be reachable"


def test_temporal_ui_points_at_frontend(services: dict) -> None:
    env = _env(TEMPORAL_UI, _service(services, TEMPORAL_UI))
    assert env.get("TEMPORAL_ADDRESS") == "temporal:7233", (
        f"{TEMPORAL_UI}: TEMPORAL_ADDRESS should be temporal:7233, got {env.get('TEMPORAL_ADDRESS')!r}"
    )


# ---------------------------------------------------------------- hub services


def test_hub_environment(services: dict) -> None:
    for name in HUB_SERVICES:
        env = _env(name, _service(services, name))
        url = env.get("HUB_DATABASE__URL")
        assert url, f"{name}: HUB_DATABASE__URL is not set"
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+psycopg", (
            f"{name}: HUB_DATABASE__URL must use the postgresql+psycopg driver, got scheme {parts.scheme!r}"
        )
        assert parts.hostname == POSTGRES, (
            f"{name}: HUB_DATABASE__URL must point at the {POSTGRES!r} service, got host {parts.hostname!r}"
        )
        assert (parts.port or 5432) == 5432, f"{name}: HUB_DATABASE__URL port is {parts.port}, expected 5432"
        assert parts.path.lstrip("/"), f"{name}: HUB_DATABASE__URL has no database name"
        assert env.get("HUB_TEMPORAL__ADDRESS") == "temporal:7233", (
            f"{name}: HUB_TEMPORAL__ADDRESS should be temporal:7233, got {env.get('HUB_TEMPORAL__ADDRESS')!r}"
        )
        assert env.get("HUB_TEMPORAL__NAMESPACE"), f"{name}: HUB_TEMPORAL__NAMESPACE is not set"
        assert env.get("HUB_TEMPORAL__TASK_QUEUE"), f"{name}: HUB_TEMPORAL__TASK_QUEUE is not set"


def test_hub_services_share_one_environment(services: dict) -> None:
    # all but the database login: hub-migrate connects as the owner, hub-api and hub-worker as the app role
    envs = {name: _env(name, _service(services, name)) for name in HUB_SERVICES}
    first = {k: v for k, v in envs[HUB_MIGRATE].items() if k != "HUB_DATABASE__URL"}
    for name, env in envs.items():
        env = {k: v for k, v in env.items() if k != "HUB_DATABASE__URL"}
        assert env == first, f"{name} environment differs from {HUB_MIGRATE}: {env} != {first}"


def test_api_and_worker_connect_as_the_app_role_and_migrations_as_the_owner(services: dict) -> None:
    """The audit trail's guard (a trigger) can be switched off by the table's owner: the processes that serve
    requests log in as a separate role, which the migrations grant only SELECT and INSERT on audit_log."""
    urls = {name: urlsplit(_env(name, _service(services, name))["HUB_DATABASE__URL"]) for name in HUB_SERVICES}
    owner = urls[HUB_MIGRATE].username
    app_role = _env(HUB_MIGRATE, services[HUB_MIGRATE]).get("HUB_DATABASE__APP_ROLE")
    assert app_role, f"{HUB_MIGRATE}: HUB_DATABASE__APP_ROLE must name the role the migrations grant"
    assert app_role != owner, f"HUB_DATABASE__APP_ROLE is {owner!r}, the owner role: name a separate login role"
    for name in (HUB_API, HUB_WORKER):
        url = urls[name]
        assert url.username == app_role, (
            f"{name}: connects as {url.username!r}; it must connect as the app role {app_role!r}, not the owner"
        )
        assert (url.hostname, url.port, url.path) == (urls[HUB_MIGRATE].hostname, urls[HUB_MIGRATE].port,
                                                      urls[HUB_MIGRATE].path), f"{name}: another database"


def test_hub_services_build_from_repo_dockerfile(services: dict) -> None:
    for name in HUB_SERVICES:
        svc = _service(services, name)
        context, dockerfile = _build_context_and_dockerfile(name, svc)
        assert context == REPO_ROOT, f"{name}: build context is {context}, expected the repo root {REPO_ROOT}"
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        repo, _ = _split_image(svc.get("image", f"{HUB_IMAGE_REPO}:latest"))
        assert repo == HUB_IMAGE_REPO, (
            f"{name}: image should be tagged {HUB_IMAGE_REPO}:..., got {svc.get('image')!r}"
        )


def test_dockerfile(services: dict) -> None:
    _, dockerfile = _build_context_and_dockerfile(HUB_API, _service(services, HUB_API))
    assert dockerfile.is_file(), f"Dockerfile {dockerfile} does not exist"
    instrs = _dockerfile_instructions(dockerfile)
    froms = [a for i, a in instrs if i == "FROM"]
    assert froms and froms[-1].split()[0].startswith("python:3.11"), (
        f"Dockerfile should build on python:3.11, FROM = {froms}"
    )
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert re.search(r"pip install\b.*\s\.(\s|$)", runs), "Dockerfile never runs 'pip install ... .'"
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), (
        f"Dockerfile must switch to a non-root USER, got {users}"
    )
    runtime = [(i, _exec_form(a)) for i, a in instrs if i in ("CMD", "ENTRYPOINT")]
    assert runtime, "Dockerfile has neither CMD nor ENTRYPOINT"
    argv = [tok for _, args in runtime for tok in args]
    assert "tracehub" in argv, f"Dockerfile CMD/ENTRYPOINT does not run 'tracehub': {runtime}"
    cmds = [args for i, args in runtime if i == "CMD"]
    assert cmds and cmds[-1][:2] == ["tracehub", "api"], (
        f"default CMD should be 'tracehub api ...', got {cmds}"
    )
    exposed = " ".join(a for i, a in instrs if i == "EXPOSE").split()
    assert "8000" in [p.split("/")[0] for p in exposed], f"Dockerfile should EXPOSE 8000, got {exposed}"


def test_dockerignore_keeps_local_state_out() -> None:
    path = REPO_ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing: .venv, var/ and .git would be sent to the build"
    patterns = {line.strip().rstrip("/") for line in path.read_text(encoding="utf-8").splitlines()}
    for needed in (".venv", "var", ".git"):
        assert needed in patterns, f".dockerignore does not exclude {needed!r}"
    for keep in ("pyproject.toml", "README.md", "*.py", "*.toml", "*.md"):
        assert keep not in patterns, f".dockerignore excludes {keep!r}, which 'pip install .' needs"


def test_hub_commands(services: dict) -> None:
    expected = {HUB_MIGRATE: ["tracehub", "migrate"], HUB_WORKER: ["tracehub", "worker"]}
    for name, argv in expected.items():
        got = _argv(_service(services, name).get("command"))
        assert got == argv, f"{name}: command is {got}, expected {argv}"
    api = _argv(_service(services, HUB_API).get("command"))
    assert api[:2] == ["tracehub", "api"], f"{HUB_API}: command is {api}, expected 'tracehub api ...'"
    assert "--host" in api and api[api.index("--host") + 1] == "0.0.0.0", (
        f"{HUB_API}: must listen on 0.0.0.0 inside the container, command is {api}"
    )
    assert "--port" in api and api[api.index("--port") + 1] == "8000", (
        f"{HUB_API}: must listen on port 8000, command is {api}"
    )


def test_hub_migrate_is_one_shot(services: dict) -> None:
    restart = _service(services, HUB_MIGRATE).get("restart")
    assert restart in ("no", None), (
        f"{HUB_MIGRATE}: restart is {restart!r}; a one-shot job must not restart (use the string \"no\")"
    )


# ---------------------------------------------------------------- PostgreSQL init SQL


def _init_sql_files(services: dict) -> list[Path]:
    files: list[Path] = []
    for vol in _service(services, POSTGRES).get("volumes") or []:
        if isinstance(vol, dict):
            source, target = vol.get("source", ""), vol.get("target", "")
        else:
            source, _, rest = str(vol).partition(":")
            target = rest.split(":")[0]
        if not target.startswith("/docker-entrypoint-initdb.d"):
            continue
        assert source.startswith((".", "/")), f"{POSTGRES}: init mount {vol!r} must be a bind mount of a file"
        host = (REPO_ROOT / source).resolve()
        assert host.exists(), (
            f"{POSTGRES}: init script source {host} referenced by volume {vol!r} does not exist"
        )
        files.extend(sorted(host.glob("*.sql")) if host.is_dir() else [host])
    return files


def test_init_sql_is_mounted_and_creates_hub_database(services: dict) -> None:
    files = _init_sql_files(services)
    assert files, f"{POSTGRES}: no init SQL mounted into /docker-entrypoint-initdb.d"
    sql = "\n".join(f.read_text(encoding="utf-8") for f in files)
    code = "\n".join(line.split("--")[0] for line in sql.splitlines())  # the statements, not the comments
    # the owner (migrations) and the app role (API, worker) both log in with what their URLs say
    for name in (HUB_MIGRATE, HUB_API):
        url = urlsplit(_env(name, _service(services, name))["HUB_DATABASE__URL"])
        user, password = url.username, url.password
        create = re.search(rf"CREATE\s+(ROLE|USER)\s+\"?{re.escape(user)}\"?\s([^;]*);", code, re.IGNORECASE)
        assert create, f"init SQL does not create the role {user!r} used by {name}'s HUB_DATABASE__URL"
        assert "LOGIN" in create.group(2).upper() or create.group(1).upper() == "USER", f"{user!r} cannot log in"
        assert password and f"'{password}'" in create.group(2), (
            f"init SQL does not set the password used by {name}'s HUB_DATABASE__URL"
        )
        assert not re.search(r"(?<!NO)SUPERUSER", create.group(2), re.IGNORECASE), f"{user!r} is a superuser"
    owner = urlsplit(_env(HUB_MIGRATE, services[HUB_MIGRATE])["HUB_DATABASE__URL"])
    user, db = owner.username, owner.path.lstrip("/")
    create_db = rf"CREATE\s+DATABASE\s+\"?{re.escape(db)}\"?\s+(WITH\s+)?OWNER\s*=?\s*\"?{re.escape(user)}\b"
    assert re.search(create_db, code, re.IGNORECASE), (
        f"init SQL does not create database {db!r} owned by {user!r}, the role {HUB_MIGRATE} connects as"
    )
    app = urlsplit(_env(HUB_API, services[HUB_API])["HUB_DATABASE__URL"]).username
    assert not re.search(rf"GRANT\s+\"?{re.escape(user)}\"?\s+TO\s+\"?{re.escape(app)}\b", code, re.IGNORECASE), (
        f"init SQL makes {app!r} a member of the owner role {user!r}: it could then disable the audit trigger"
    )


# ---------------------------------------------------------------- published ports


def test_published_ports(services: dict) -> None:
    expected = {HUB_API: 8000, TEMPORAL: 7233, TEMPORAL_UI: 8080}
    for name, port in expected.items():
        ports = _published_ports(name, _service(services, name))
        assert ports.get(port) == port, (
            f"{name}: port {port} is not published as {port}:{port} (published: {ports})"
        )
