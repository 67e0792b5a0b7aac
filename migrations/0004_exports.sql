-- Export jobs (CONTRACT §5–§6). A read model of ATP_EXPORTS: a row appears with its
-- `atp.export.requested.<tenant>` event and is finished by the `atp.export.completed.<tenant>`
-- event, so a rebuild from the stream restores every export's outcome. Progress, attempts and
-- webhook delivery are the exporter's working state on top.
CREATE TABLE exports (
    export_id        text        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    requested_by     text        NOT NULL,
    requested_at     timestamptz NOT NULL,
    -- The `/audit/records` filters, as requested (no limit or cursor).
    selection        jsonb       NOT NULL,
    format           text        NOT NULL DEFAULT 'tar',
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    -- Fixed when packaging first starts, so a restarted exporter packages the same records
    -- against the same checkpoints and writes the same bytes: [{sourceId, treeSize}].
    snapshot         jsonb,
    created_at       timestamptz,
    records_total    bigint,
    records_done     bigint      NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0,
    started_at       timestamptz,
    finished_at      timestamptz,
    object_key       text,
    bytes            bigint,
    bundle_sha256    text,
    manifest_sha256  text,
    record_count     bigint,
    failure_code     text,
    failure_detail   text,
    -- Completion webhook delivery, when the tenant has one.
    webhook_status   text        CHECK (webhook_status IN ('pending', 'delivered', 'failed')),
    webhook_attempts integer     NOT NULL DEFAULT 0,
    webhook_next_at  timestamptz,
    webhook_error    text,
    webhook_at       timestamptz
);

CREATE INDEX exports_by_tenant ON exports (tenant_id, requested_at DESC);
-- The per-tenant concurrency cap counts these.
CREATE INDEX exports_active ON exports (tenant_id) WHERE status IN ('queued', 'running');
CREATE INDEX exports_webhooks_due ON exports (webhook_next_at) WHERE webhook_status = 'pending';
