-- rowguard least-privilege roles for PostgreSQL. Not run by `rowguard migrate`: a DBA reviews and
-- runs it once per database, as a superuser or a role with CREATEROLE, e.g.
--   psql -v ON_ERROR_STOP=1 -d app -f roles.sql
-- then sets the passwords (ALTER ROLE ... PASSWORD) or maps the roles in pg_hba.conf.
-- One run at a time per database: two runs at once (two table prefixes, say) GRANT on schema public
-- together, and PostgreSQL fails the second with "tuple concurrently updated"; run it again then.
--
--   rowguard_owner  owns the tables; runs `rowguard migrate` (DDL).
--   rowguard_app    what services connect as: DML on rowguard tables and EXECUTE on rowguard's
--                   functions only, no DDL, no TRUNCATE.
-- Run migrations as rowguard_owner (or SET ROLE rowguard_owner) so the tables belong to it and the
-- default privileges below grant the application role on every table a later migration adds.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_owner') THEN
    CREATE ROLE rowguard_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rowguard_app') THEN
    CREATE ROLE rowguard_app LOGIN;
  END IF;
END
$$;

GRANT USAGE, CREATE ON SCHEMA public TO rowguard_owner;
GRANT USAGE ON SCHEMA public TO rowguard_app;

-- Tables that exist already (re-running this script after a migration is safe).
DO $$
DECLARE t record;
BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'rowguard_%' LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO rowguard_app', t.tablename);
  END LOOP;
  FOR t IN SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' AND sequencename LIKE 'rowguard_%' LOOP
    EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE public.%I TO rowguard_app', t.sequencename);
  END LOOP;
  -- The server-side statements (schema step 008 on): EXECUTE only, which the migration revokes from PUBLIC.
  FOR t IN SELECT CAST(p.oid AS regprocedure) AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND p.proname LIKE 'rowguard_%' LOOP
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO rowguard_app', t.signature);
  END LOOP;
END
$$;

-- Tables, sequences and functions rowguard_owner creates from now on.
ALTER DEFAULT PRIVILEGES FOR ROLE rowguard_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO rowguard_app;
ALTER DEFAULT PRIVILEGES FOR ROLE rowguard_owner IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO rowguard_app;
ALTER DEFAULT PRIVILEGES FOR ROLE rowguard_owner IN SCHEMA public
  GRANT EXECUTE ON FUNCTIONS TO rowguard_app;
