-- `q` (a substring of a record's attribute values) backed by a trigram index, so one tenant's
-- search reads the rows that can match instead of every row it has: without it, a search for a
-- rare word walks the tenant's whole history and holds a connection for its statement timeout.
--
-- pg_trgm ships with PostgreSQL (contrib) and is a trusted extension (PostgreSQL 13+): the
-- database owner may create it without being a superuser.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX records_by_text ON records USING gin (attributes_text gin_trgm_ops);

-- A rebuilt records table (`atp replay`) gets the index too.
CREATE OR REPLACE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atp_create_records_table_unisolated(tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (attributes_text gin_trgm_ops)', tbl || '_by_text', tbl);
    PERFORM atp_isolate_tenants(tbl);
END $$;

-- The gateway cannot use that index by itself. Its role is under forced row-level security, and
-- PostgreSQL evaluates the policy's condition before any of a query's conditions that are not
-- leakproof; LIKE (textlike) is not, so it cannot be an index condition and the search reads
-- every row of the tenant, index or not. Marking LIKE leakproof needs a superuser and changes
-- it for every database user.
--
-- So the gateway searches through this function. It runs as the owner (whose policy shows
-- every row, so the planner may use the index) and shows exactly what the gateway's own policy
-- would: rows of the tenant the connection is bound to (`atp.tenant`, which the gateway sets for
-- every request), and none when the caller names another tenant or none is bound. It gives the
-- gateway no row it could not read anyway. The query is built from fixed text and run with
-- its values as parameters, so it is planned with them, as the store's own query would be.
CREATE FUNCTION atp_search_records(
    p_tenant text, p_q text,
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz, p_after_id text, p_limit bigint)
RETURNS TABLE (
    tenant_id text, record_id text, source_id text, chain_index bigint,
    occurred_at timestamptz, committed_at timestamptz, digest bytea, chain_hash bytea,
    ledger_seq bigint, record bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    sql text;
BEGIN
    sql := atp_search_records_sql(p_from, p_to, p_source_id, p_actor_id, p_action,
        p_resource_type, p_resource_id, p_after_at);
    IF p_tenant IS NULL OR p_tenant = '' OR p_tenant IS DISTINCT FROM current_setting('atp.tenant', true) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE sql USING p_tenant, p_q, p_from, p_to, p_source_id, p_actor_id,
        p_action, p_resource_type, p_resource_id, p_after_at, p_after_id, p_limit;
END $$;

-- The page query `atp_search_records` runs ($1 tenant, $2 pattern, $3.. the filters, in the
-- order of its parameters), with only the filters that are set.
CREATE FUNCTION atp_search_records_sql(
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    sql text := 'SELECT tenant_id, record_id, source_id, chain_index, occurred_at, committed_at, '
        'digest, chain_hash, ledger_seq, record FROM records '
        'WHERE tenant_id = $1 AND attributes_text LIKE $2';
BEGIN
    IF p_from IS NOT NULL THEN sql := sql || ' AND occurred_at >= $3'; END IF;
    IF p_to IS NOT NULL THEN sql := sql || ' AND occurred_at < $4'; END IF;
    IF p_source_id IS NOT NULL THEN sql := sql || ' AND source_id = $5'; END IF;
    IF p_actor_id IS NOT NULL THEN sql := sql || ' AND actor_id = $6'; END IF;
    IF p_action IS NOT NULL THEN sql := sql || ' AND action = $7'; END IF;
    IF p_resource_type IS NOT NULL THEN sql := sql || ' AND resource_type = $8'; END IF;
    IF p_resource_id IS NOT NULL THEN sql := sql || ' AND resource_id = $9'; END IF;
    IF p_after_at IS NOT NULL THEN sql := sql || ' AND (occurred_at, record_id) < ($10, $11)'; END IF;
    RETURN sql || ' ORDER BY occurred_at DESC, record_id DESC LIMIT $12';
END $$;

-- The plan `atp_search_records` gets for these values, as its owner sees it: what the test of
-- the index reads. Not for the gateway (a plan's row estimates span tenants).
CREATE FUNCTION atp_search_records_plan(
    p_tenant text, p_q text,
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz, p_after_id text, p_limit bigint)
RETURNS SETOF text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN ' || atp_search_records_sql(p_from, p_to, p_source_id,
        p_actor_id, p_action, p_resource_type, p_resource_id, p_after_at)
        USING p_tenant, p_q, p_from, p_to, p_source_id, p_actor_id, p_action, p_resource_type,
            p_resource_id, p_after_at, p_after_id, p_limit;
END $$;

REVOKE ALL ON FUNCTION atp_search_records(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION atp_search_records_plan(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atp_search_records(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint) TO atp_gateway;
