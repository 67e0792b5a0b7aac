-- Erasure and expiry scrub the read model in place (issue 15's erasure target), and rows that
-- seal values are stored without compression.

-- Where each sealed value sits, by the key it is sealed under: {"<kid>": [["attributes",
-- "email"], ...]} (JSON Pointer tokens). NULL for rows projected before this migration, which
-- a scrub derives again from their record bytes instead.
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

-- `p_view` (a row's data_view) with every value sealed under one of `p_kids` marked erased.
CREATE FUNCTION atp_erase_view(p_view jsonb, p_sealed jsonb, p_kids text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    tokens text[];
BEGIN
    FOR tokens IN
        SELECT ARRAY(SELECT jsonb_array_elements_text(p.path))
        FROM jsonb_each(p_sealed) AS k(kid, paths)
        CROSS JOIN LATERAL jsonb_array_elements(k.paths) AS p(path)
        WHERE k.kid = ANY(p_kids)
    LOOP
        IF cardinality(tokens) = 0 THEN
            -- The whole of the data was one sealed value.
            RETURN '{"erased": true}'::jsonb;
        END IF;
        p_view := jsonb_set(p_view, tokens, '{"erased": true}'::jsonb, false);
    END LOOP;
    RETURN p_view;
END $$;

-- Whether the value at `p_tokens` is sealed under one of `p_kids`.
CREATE FUNCTION atp_sealed_at(p_sealed jsonb, p_kids text[], p_tokens text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM jsonb_each(p_sealed) AS k(kid, paths)
        CROSS JOIN LATERAL jsonb_array_elements(k.paths) AS p(path)
        WHERE k.kid = ANY(p_kids) AND p.path = to_jsonb(p_tokens))
$$;
