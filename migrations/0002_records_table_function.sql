-- One definition of a records table, so `atp replay` can build a fresh one even when the live
-- table is gone (dropped or damaged). Index names follow the table name; the swap renames
-- them back to records_*.
CREATE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
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
            CONSTRAINT %2$I PRIMARY KEY (tenant_id, record_id))
    $ddl$, tbl, tbl || '_pkey');
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, occurred_at DESC, record_id DESC)', tbl || '_by_time', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, actor_id, occurred_at DESC, record_id DESC)', tbl || '_by_actor', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, resource_type, resource_id, occurred_at DESC, record_id DESC)', tbl || '_by_resource', tbl);
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, source_id, event_id)', tbl || '_by_event', tbl);
END $$;
