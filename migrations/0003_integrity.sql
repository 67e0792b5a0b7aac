-- The integrity worker's read models (CONTRACT §3–§4). Tiles and log state are derived from
-- ATP_LEDGER and can be rebuilt by re-reading it; checkpoints mirror ATP_CHECKPOINTS, which
-- holds the signed notes themselves.

-- Each partition's Merkle log as C2SP tlog-tiles (height 8): tile (level, idx) holds up to 256
-- hashes of tree level 8·level, 32 bytes each. Tiles only grow: the right-edge tile of a level
-- is rewritten with a longer copy, a full tile (8192 bytes) never changes.
CREATE TABLE merkle_tiles (
    tenant_id  text     NOT NULL,
    source_id  text     NOT NULL,
    level      smallint NOT NULL CHECK (level >= 0),
    idx        bigint   NOT NULL CHECK (idx >= 0),
    hashes     bytea    NOT NULL CHECK (length(hashes) % 32 = 0 AND length(hashes) BETWEEN 32 AND 8192),
    PRIMARY KEY (tenant_id, source_id, level, idx)
);

-- Where each partition's log stands, written with its tiles in one transaction.
CREATE TABLE merkle_logs (
    tenant_id        text        NOT NULL,
    source_id        text        NOT NULL,
    tree_size        bigint      NOT NULL,
    root             bytea       NOT NULL,
    -- chainHash of the last record in the tree: the linear chain is re-checked as it grows.
    chain_hash       bytea       NOT NULL,
    ledger_seq       bigint      NOT NULL,
    checkpoint_size  bigint      NOT NULL DEFAULT 0,
    -- Set when the worker found the ledger inconsistent (gap, reorder, broken link): the log
    -- stops growing and no checkpoint covers anything past it until an operator acts.
    halted_at_index  bigint,
    halt_reason      text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, source_id)
);

-- Signed checkpoints (C2SP tlog-checkpoint as signed-note), one per issued tree size.
CREATE TABLE checkpoints (
    tenant_id   text        NOT NULL,
    source_id   text        NOT NULL,
    tree_size   bigint      NOT NULL,
    root        bytea       NOT NULL,
    key_id      text        NOT NULL,
    note        text        NOT NULL,
    issued_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, source_id, tree_size)
);

-- Records by chain position: proofs and range verification find a record by its leaf index.
CREATE INDEX records_by_chain ON records (tenant_id, source_id, chain_index);

CREATE OR REPLACE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
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
    EXECUTE format('CREATE INDEX %I ON %I (tenant_id, source_id, chain_index)', tbl || '_by_chain', tbl);
END $$;
