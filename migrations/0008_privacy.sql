-- Privacy (issue 15, CONTRACT §8): what the read model keeps so that every read can show each
-- caller only what the tenant's policy lets them see, and no filter or search can match on a
-- value the caller may not see.
--
-- The ledger holds `personal` and `sensitive` values sealed (ADR 0019). The projector opens them
-- and keeps the clear values here, for readers allowed to see them; erasure and retention
-- remove these clear copies (the ledger's sealed copies die with their keys).

ALTER TABLE records
    -- Attribute values classified personal or sensitive, joined like attributes_text (which now
    -- holds only public, internal and confidential values): `q` searches each column only for a
    -- caller who reads every classification it holds.
    ADD COLUMN private_text text NOT NULL DEFAULT '',
    -- The classification (0 public .. 4 sensitive) of each filter column's value: a filter on
    -- a column matches only rows where the caller reads it.
    ADD COLUMN actor_id_class smallint NOT NULL DEFAULT 1,
    ADD COLUMN action_class smallint NOT NULL DEFAULT 1,
    ADD COLUMN resource_type_class smallint NOT NULL DEFAULT 1,
    ADD COLUMN resource_id_class smallint NOT NULL DEFAULT 1,
    -- JSON Pointer (into the event's data) → classification, for every value not `internal`.
    ADD COLUMN field_classes jsonb NOT NULL DEFAULT '{}',
    -- The event's data with sealed values opened ({"erased": true} where the key is gone);
    -- NULL when the record seals nothing (its data is then the record's own).
    ADD COLUMN data_view jsonb,
    -- The ids of the subject keys the record's sealed values name (a JSON array): what erasure
    -- and retention find a key's records by (`kids ?| array[...]`, through the GIN index).
    ADD COLUMN kids jsonb NOT NULL DEFAULT '[]';

CREATE INDEX records_by_private_text ON records USING gin (private_text gin_trgm_ops);
CREATE INDEX records_by_kid ON records USING gin (kids);

-- A rebuilt records table (`atp replay`) gets the same columns and indexes.
CREATE OR REPLACE FUNCTION atp_create_records_table_unisolated(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE %1$I (
            tenant_id text NOT NULL, record_id text NOT NULL, source_id text NOT NULL,
            chain_index bigint NOT NULL, event_id text NOT NULL, event_type text NOT NULL,
            occurred_at timestamptz NOT NULL, received_at timestamptz NOT NULL,
            committed_at timestamptz NOT NULL, actor_id text NOT NULL, actor_type text NOT NULL,
            action text NOT NULL, resource_type text NOT NULL, resource_id text NOT NULL,
            outcome text, classification text NOT NULL, policy_version integer NOT NULL,
            attributes_text text NOT NULL, digest bytea NOT NULL, chain_hash bytea NOT NULL,
            ledger_seq bigint NOT NULL, ingress_seq bigint, record bytea NOT NULL,
            private_text text NOT NULL DEFAULT '',
            actor_id_class smallint NOT NULL DEFAULT 1, action_class smallint NOT NULL DEFAULT 1,
            resource_type_class smallint NOT NULL DEFAULT 1,
            resource_id_class smallint NOT NULL DEFAULT 1,
            field_classes jsonb NOT NULL DEFAULT '{}', data_view jsonb,
            kids jsonb NOT NULL DEFAULT '[]',
            CONSTRAINT %2$I PRIMARY KEY (tenant_id, record_id))
    $ddl$, tbl, tbl || '_pkey');
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, occurred_at DESC, record_id DESC)', tbl || '_by_time', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, actor_id, occurred_at DESC, record_id DESC)', tbl || '_by_actor', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, resource_type, resource_id, occurred_at DESC, record_id DESC)', tbl || '_by_resource', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, source_id, event_id)', tbl || '_by_event', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, source_id, chain_index)', tbl || '_by_chain', tbl);
END $$;

CREATE OR REPLACE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atp_create_records_table_unisolated(tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (attributes_text gin_trgm_ops)', tbl || '_by_text', tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (private_text gin_trgm_ops)', tbl || '_by_private_text', tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (kids)', tbl || '_by_kid', tbl);
    PERFORM atp_isolate_tenants(tbl);
END $$;

-- The search of 0007, with the caller's clearance: `p_readable` holds the classifications the
-- caller reads in clear. Each filter matches only where the caller reads its column's value,
-- and `q` searches attributes_text only if the caller reads public, internal and confidential,
-- private_text only if it reads personal and sensitive.
DROP FUNCTION atp_search_records(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint);
DROP FUNCTION atp_search_records_plan(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint);
DROP FUNCTION atp_search_records_sql(timestamptz, timestamptz, text, text, text, text, text, timestamptz);

CREATE FUNCTION atp_search_records_sql(
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz, p_readable smallint[])
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    sql text := 'SELECT tenant_id, record_id, source_id, chain_index, occurred_at, committed_at, '
        'digest, chain_hash, ledger_seq, record, field_classes, data_view FROM records '
        'WHERE tenant_id = $1';
    searched text[] := '{}';
BEGIN
    IF p_readable @> '{0,1,2}'::smallint[] THEN searched := array_append(searched, 'attributes_text LIKE $2'); END IF;
    IF p_readable @> '{3,4}'::smallint[] THEN searched := array_append(searched, 'private_text LIKE $2'); END IF;
    IF cardinality(searched) = 0 THEN
        sql := sql || ' AND false';
    ELSE
        sql := sql || ' AND (' || array_to_string(searched, ' OR ') || ')';
    END IF;
    IF p_from IS NOT NULL THEN sql := sql || ' AND occurred_at >= $3'; END IF;
    IF p_to IS NOT NULL THEN sql := sql || ' AND occurred_at < $4'; END IF;
    IF p_source_id IS NOT NULL THEN sql := sql || ' AND source_id = $5'; END IF;
    IF p_actor_id IS NOT NULL THEN sql := sql || ' AND actor_id = $6 AND actor_id_class = ANY($13)'; END IF;
    IF p_action IS NOT NULL THEN sql := sql || ' AND action = $7 AND action_class = ANY($13)'; END IF;
    IF p_resource_type IS NOT NULL THEN sql := sql || ' AND resource_type = $8 AND resource_type_class = ANY($13)'; END IF;
    IF p_resource_id IS NOT NULL THEN sql := sql || ' AND resource_id = $9 AND resource_id_class = ANY($13)'; END IF;
    IF p_after_at IS NOT NULL THEN sql := sql || ' AND (occurred_at, record_id) < ($10, $11)'; END IF;
    RETURN sql || ' ORDER BY occurred_at DESC, record_id DESC LIMIT $12';
END $$;

CREATE FUNCTION atp_search_records(
    p_tenant text, p_q text,
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz, p_after_id text, p_limit bigint, p_readable smallint[])
RETURNS TABLE (
    tenant_id text, record_id text, source_id text, chain_index bigint,
    occurred_at timestamptz, committed_at timestamptz, digest bytea, chain_hash bytea,
    ledger_seq bigint, record bytea, field_classes jsonb, data_view jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    sql text;
BEGIN
    sql := atp_search_records_sql(p_from, p_to, p_source_id, p_actor_id, p_action,
        p_resource_type, p_resource_id, p_after_at, p_readable);
    IF p_tenant IS NULL OR p_tenant = '' OR p_tenant IS DISTINCT FROM current_setting('atp.tenant', true) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE sql USING p_tenant, p_q, p_from, p_to, p_source_id, p_actor_id,
        p_action, p_resource_type, p_resource_id, p_after_at, p_after_id, p_limit, p_readable;
END $$;

CREATE FUNCTION atp_search_records_plan(
    p_tenant text, p_q text,
    p_from timestamptz, p_to timestamptz,
    p_source_id text, p_actor_id text, p_action text, p_resource_type text, p_resource_id text,
    p_after_at timestamptz, p_after_id text, p_limit bigint, p_readable smallint[])
RETURNS SETOF text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    RETURN QUERY EXECUTE 'EXPLAIN ' || atp_search_records_sql(p_from, p_to, p_source_id,
        p_actor_id, p_action, p_resource_type, p_resource_id, p_after_at, p_readable)
        USING p_tenant, p_q, p_from, p_to, p_source_id, p_actor_id, p_action, p_resource_type,
            p_resource_id, p_after_at, p_after_id, p_limit, p_readable;
END $$;

REVOKE ALL ON FUNCTION atp_search_records(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint, smallint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION atp_search_records_plan(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint, smallint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION atp_search_records(text, text, timestamptz, timestamptz, text, text, text, text, text, timestamptz, text, bigint, smallint[]) TO atp_gateway;

-- Every subject key the ledger's records name, as the projector meets them: what retention
-- finds expired keys by (a key id names its retention policy and time bucket, ADR 0019). Not
-- the keys themselves: those are in ATP_SUBJECT_KEYS, wrapped.
CREATE TABLE subject_keys (
    tenant_id           text        NOT NULL,
    kid                 text        NOT NULL,
    retention_policy_id text        NOT NULL,
    bucket              text        NOT NULL,
    -- When the bucket ends: no key expires before.
    bucket_end          timestamptz NOT NULL,
    -- Set when erasure or retention destroyed the key.
    destroyed_at        timestamptz,
    destroyed_by        text,
    -- The admin-trail event that attests a retention expiry of the key.
    attested_in         text,
    PRIMARY KEY (tenant_id, kid)
);
CREATE INDEX subject_keys_live ON subject_keys (tenant_id, bucket_end) WHERE destroyed_at IS NULL;

-- Data-subject requests (CONTRACT §8). The gateway queues them; the lifecycle role carries
-- them out, step by step, each step recorded here so a crash resumes where it stopped.
CREATE TABLE privacy_requests (
    tenant_id        text        NOT NULL,
    request_id       text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('access', 'erasure')),
    -- The subject's id, kept only while the request runs: cleared when it is done.
    subject_id       text,
    -- sha256(salt ‖ subject id), hex, with its random salt: what the attestation names.
    subject_hash     text        NOT NULL,
    subject_salt     text        NOT NULL,
    -- queued → keys_destroyed → scrubbed → done; or blocked (a legal hold) / failed.
    state            text        NOT NULL DEFAULT 'queued',
    requested_by     text        NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The read model is scrubbed again once every process's key cache has expired.
    scrub_again_at   timestamptz,
    key_ids          text[]      NOT NULL DEFAULT '{}',
    records_affected bigint      NOT NULL DEFAULT 0,
    -- The admin-trail event that attests the erasure (its record once projected).
    attestation_event_id text,
    detail           text,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX privacy_requests_pending ON privacy_requests (requested_at) WHERE state NOT IN ('done', 'blocked', 'failed');

-- Legal holds (CONTRACT §8): what they cover can be neither erased nor expired.
CREATE TABLE legal_holds (
    tenant_id   text        NOT NULL,
    hold_id     text        NOT NULL,
    -- The scope: any of a subject, a source and a time range (occurredAt), all that are set.
    subject_id  text,
    source_id   text,
    from_at     timestamptz,
    to_at       timestamptz,
    reason      text        NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_by text,
    released_at timestamptz,
    PRIMARY KEY (tenant_id, hold_id)
);

SELECT atp_isolate_tenants(t) FROM unnest(ARRAY['privacy_requests', 'legal_holds']) AS t;
GRANT INSERT ON privacy_requests TO atp_gateway;
GRANT INSERT, UPDATE ON legal_holds TO atp_gateway;
