-- Runs once, on first initialisation of the PostgreSQL data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
-- Temporal uses the superuser from POSTGRES_USER (temporal) and its own
-- temporal / temporal_visibility databases; the hub gets its own database and two roles
-- (migrations/app_role.py):
--   tracehub      owns the database and its tables; only the migrations (`tracehub migrate`, the hub-migrate
--                 service) connect as it.
--   tracehub_app  the login of the API and the worker (hub-api, hub-worker). It owns nothing: the migrations
--                 (told its name by HUB_DATABASE__APP_ROLE) grant it the rows of every table, but only SELECT
--                 and INSERT on audit_log, so it can neither change nor empty the audit trail, nor disable the
--                 trigger that guards it.
CREATE ROLE tracehub WITH LOGIN PASSWORD 'tracehub';
CREATE DATABASE tracehub OWNER tracehub;
CREATE ROLE tracehub_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD 'tracehub_app';
GRANT CONNECT ON DATABASE tracehub TO tracehub_app;
