-- Read models projected from the ledger (ATP_LEDGER) and the rejected stream (ATP_REJECTED).
-- Everything here can be rebuilt with `atp replay`; the ledger is the system of record.

-- One row per accepted record: the filter columns of CONTRACT §5, the canonical record bytes
-- exactly as on the ledger, their digest and the chain hash.
CREATE TABLE records (
    tenant_id       text        NOT NULL,
    record_id       text        NOT NULL,
    source_id       text        NOT NULL,
    chain_index     bigint      NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    committed_at    timestamptz NOT NULL,
    actor_id        text        NOT NULL,
    actor_type      text        NOT NULL,
    action          text        NOT NULL,
    resource_type   text        NOT NULL,
    resource_id     text        NOT NULL,
    outcome         text,
    classification  text        NOT NULL,
    policy_version  integer     NOT NULL,
    -- Attribute values joined by spaces, lower-cased: what `q` searches.
    attributes_text text        NOT NULL,
    digest          bytea       NOT NULL,
    chain_hash      bytea       NOT NULL,
    ledger_seq      bigint      NOT NULL,
    ingress_seq     bigint,
    record          bytea       NOT NULL,
    -- recordId is in the record bytes, so a replayed record lands on the same key: projection
    -- is idempotent with ON CONFLICT DO NOTHING.
    PRIMARY KEY (tenant_id, record_id)
);

-- Only the indexes the query API needs: each costs ingest throughput (LIMITS.md).
-- Newest first within a tenant, keyset on (occurred_at, record_id).
CREATE INDEX records_by_time     ON records (tenant_id, occurred_at DESC, record_id DESC);
CREATE INDEX records_by_actor    ON records (tenant_id, actor_id, occurred_at DESC, record_id DESC);
CREATE INDEX records_by_resource ON records (tenant_id, resource_type, resource_id, occurred_at DESC, record_id DESC);
-- Idempotency look-ups: "the same CloudEvents id answers the same record".
CREATE INDEX records_by_event    ON records (tenant_id, source_id, event_id);

-- One row per refused submission.
CREATE TABLE rejections (
    rejected_seq  bigint      PRIMARY KEY,  -- ATP_REJECTED stream sequence
    tenant_id     text        NOT NULL,
    source_id     text        NOT NULL,
    ingress_seq   bigint      NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    event_id      text,
    received_at   timestamptz NOT NULL,
    rejected_at   timestamptz NOT NULL,
    envelope      bytea       NOT NULL      -- the rejection message as stored on ATP_REJECTED
);
CREATE INDEX rejections_by_time    ON rejections (tenant_id, rejected_at DESC, rejected_seq DESC);
CREATE INDEX rejections_by_ingress ON rejections (ingress_seq);

-- How far each projection has read its stream. Written in the same transaction as the rows,
-- so a projector resumes exactly where its last commit ended.
CREATE TABLE projection_watermarks (
    projection    text        PRIMARY KEY,
    stream_seq    bigint      NOT NULL,
    last_committed_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
