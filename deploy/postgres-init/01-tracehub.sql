-- Runs once, on first initialisation of the PostgreSQL data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yml).
-- Temporal uses the superuser from POSTGRES_USER (temporal) and its own
-- temporal / temporal_visibility databases; the hub gets its own role and database.
CREATE ROLE tracehub WITH LOGIN PASSWORD 'tracehub';
CREATE DATABASE tracehub OWNER tracehub;
