-- The application's database user (run by migrate.sh as the database owner, after the migrations).
-- Idempotent: every deployment re-applies it, which also puts a changed password from the secret into effect.
-- psql variables: app_user, app_password.

SELECT format('CREATE ROLE %I LOGIN', :'app_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
-- A new role has no superuser, database or role creation rights; a non-superuser owner cannot even restate that.
ALTER ROLE :"app_user" WITH LOGIN PASSWORD :'app_password';
-- The owner must be a member of the role to hand it objects (RDS's master user is not a superuser).
GRANT :"app_user" TO CURRENT_USER;

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), :'app_user') \gexec
-- CREATE on the schema: at start-up the API runs the outbox's CREATE TABLE/FUNCTION ... IF NOT EXISTS, which
-- PostgreSQL checks against the schema's CREATE right even when the objects exist. The application's own tables
-- stay owned by the owner: the user can read and write their rows, never alter or drop them.
GRANT USAGE, CREATE ON SCHEMA public TO :"app_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_user";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO :"app_user";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_user";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"app_user";

-- The outbox re-creates its trigger at every API start, which only the table's owner may do.
SELECT format('ALTER TABLE %I OWNER TO %I', c.relname, :'app_user')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname = 'anb_queue_outbox' \gexec
SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, :'app_user')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND p.proname = 'anb_queue_outbox_notify' \gexec
