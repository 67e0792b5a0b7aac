-- The edition the export was requested under (ADR 0011): the exporter delivers a completion
-- webhook only for editions that have them, whatever the tenant's webhook setting says.
ALTER TABLE exports
    ADD COLUMN edition text NOT NULL DEFAULT 'standard'
    CHECK (edition IN ('standard', 'enterprise'));
