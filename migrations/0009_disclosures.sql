-- Disclosures in export bundles (ADR 0020) and data-subject access requests (CONTRACT §8).

ALTER TABLE exports
    -- What the requester reads in clear (classification names), under the tenant's policy when
    -- it asked: the selection's filters match, and the bundle discloses sealed values, only of
    -- these. NULL for exports requested before disclosures: nothing is disclosed, and filters
    -- match only what every permission reads by default (public, internal, confidential).
    ADD COLUMN readable text[],
    -- A data-subject access export: only records naming one of these subject keys, and only
    -- values sealed under them disclosed. Key ids are random: they name no one.
    ADD COLUMN subject_keys text[],
    -- The subject keys whose values the stored bundle discloses: an erasure or an expiry of
    -- one of them withdraws the bundle (deletes it from the cold store).
    ADD COLUMN disclosed_kids jsonb NOT NULL DEFAULT '[]',
    -- When the bundle was withdrawn so.
    ADD COLUMN withdrawn_at timestamptz;
CREATE INDEX exports_by_disclosed_kid ON exports USING gin (disclosed_kids);

ALTER TABLE privacy_requests
    -- The export an access request starts: chosen and stored before it is requested, so a
    -- retried step requests the same export again (deduplicated by its message id).
    ADD COLUMN export_id text;

-- The lifecycle role looks at an access request waiting for its export only once the export
-- has finished.
CREATE INDEX privacy_requests_by_export ON privacy_requests (export_id) WHERE export_id IS NOT NULL;
