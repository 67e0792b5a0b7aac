-- Erasure and expiry scrub the read model in place (issue 15's erasure target), and rows that
-- seal values are stored without compression.

-- Where each value the row shows in clear sits, by the key it was sealed under: {"<kid>":
-- [["attributes", "email"], ...]} (JSON Pointer tokens). A key the projector did not have is
-- not there (its values already read erased): `sealed ?| <kids>` finds exactly the rows a scrub
-- of those keys still has to write. '{}' when nothing sealed is shown in clear; NULL for rows
-- that seal nothing, and for rows projected before this migration (a scrub derives those again
-- from their record bytes).
--
-- `data_view` is now NULL also when no sealed value is shown in clear: readers then show each
-- sealed value of the record as erased. A scrub in place sets it so, which leaves no clear copy
-- in the row without rewriting the view value by value.
ALTER TABLE records ADD COLUMN sealed jsonb;

-- A record that seals values is ~0.6 KiB longer than one that does not, which takes a typical
-- row past PostgreSQL's 2 KiB default and into pglz compression on every insert (a third of
-- what sealing cost the database). The record bytes and the views are mostly base64 and hex:
-- they hardly compress. Rows up to a page are kept inline, as they are.
ALTER TABLE records SET (toast_tuple_target = 8160);

CREATE OR REPLACE FUNCTION atp_create_records_table(tbl text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM atp_create_records_table_unisolated(tbl);
    EXECUTE format('ALTER TABLE %I ADD COLUMN sealed jsonb', tbl);
    EXECUTE format('ALTER TABLE %I SET (toast_tuple_target = 8160)', tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (attributes_text gin_trgm_ops)', tbl || '_by_text', tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (private_text gin_trgm_ops)', tbl || '_by_private_text', tbl);
    EXECUTE format('CREATE INDEX %I ON %I USING gin (kids)', tbl || '_by_kid', tbl);
    PERFORM atp_isolate_tenants(tbl);
END $$;

