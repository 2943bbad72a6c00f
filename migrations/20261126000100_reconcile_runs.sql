-- When each PBX was last reconciled (`session-enricher reconcile`, or the
-- worker every ENRICHER_RECONCILE_INTERVAL_S). Written only by the holder of
-- the PBX's reconciliation advisory lock, so that replicas reconcile a PBX
-- once per interval between them, not once each. For operators too: when
-- did it last run, and how did it end.
CREATE TABLE reconcile_runs (
    pbx          text        PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,            -- NULL while running (or if the run died)
    result       text                    -- done | incomplete | failed; NULL while running
);
