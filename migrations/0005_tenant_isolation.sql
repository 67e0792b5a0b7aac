-- Row-level security by tenant (ADR 0009). The gateway reads as a member of `atp_gateway`:
-- not a superuser, not the owner, and every table forces RLS, so it sees a tenant's rows only
-- in a transaction that set `atp.tenant` (SELECT set_config('atp.tenant', $1, true)); without
-- it, no rows at all. ATP's workers, which span tenants by design, connect as the owner (the
-- role that runs these migrations) and keep seeing every row through their own policy.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'atp_gateway') THEN
        CREATE ROLE atp_gateway NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END $$;

-- So that a gateway given only the owner's URL can take the role on (SET ROLE atp_gateway).
-- A role a DBA made beforehand may not let us; then the gateway needs a login of its own.
DO $$
BEGIN
    GRANT atp_gateway TO CURRENT_USER;
EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
    RAISE NOTICE 'atp_gateway not granted to %: give the gateway a login role in atp_gateway', current_user;
END $$;

GRANT USAGE ON SCHEMA public TO atp_gateway;
GRANT SELECT ON _sqlx_migrations, projection_watermarks TO atp_gateway;

CREATE FUNCTION atp_isolate_tenants(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
    EXECUTE format(
        'CREATE POLICY atp_one_tenant ON %I TO atp_gateway '
        'USING (tenant_id = current_setting(''atp.tenant'', true)) '
        'WITH CHECK (tenant_id = current_setting(''atp.tenant'', true))', tbl);
    EXECUTE format(
        'CREATE POLICY atp_all_tenants ON %I TO CURRENT_USER USING (true) WITH CHECK (true)', tbl);
    EXECUTE format('GRANT SELECT ON %I TO atp_gateway', tbl);
END $$;

SELECT atp_isolate_tenants(t)
FROM unnest(ARRAY['records', 'rejections', 'merkle_tiles', 'merkle_logs', 'checkpoints', 'exports']) AS t;
-- The gateway admits export requests.
GRANT INSERT ON exports TO atp_gateway;

-- A rebuilt records table is isolated like the one it replaces.
ALTER FUNCTION atp_create_records_table(text) RENAME TO atp_create_records_table_unisolated;
CREATE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atp_create_records_table_unisolated(tbl);
    PERFORM atp_isolate_tenants(tbl);
END $$;
