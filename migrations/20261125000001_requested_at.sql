-- Request-time ordering. Answers used to be ordered by when the PBX answered
-- (fetched_at); with two replicas, a slow answer to an earlier request could
-- then overwrite a newer state written (and acked) in between. A request
-- sent later sees a newer state, so rows are now ordered by when the request
-- of their answer was sent (requested_at), ties broken by fetched_at: an
-- upsert applies only if (requested_at, fetched_at) is not older than the
-- stored pair.

-- Rows written before this column existed take their fetched_at: a little
-- later than their request really was, so for one request's duration after
-- the upgrade a newer answer may be refused as stale; the next event of that
-- session fetches it again.
ALTER TABLE message_sessions ADD COLUMN requested_at timestamptz;
UPDATE message_sessions SET requested_at = fetched_at;
ALTER TABLE message_sessions ALTER COLUMN requested_at SET NOT NULL;
COMMENT ON COLUMN message_sessions.requested_at IS
    'when the request of the stored answer was sent; a write for an earlier-sent request changes nothing';
COMMENT ON COLUMN message_sessions.fetched_at IS
    'when the PBX answered; breaks a tie on requested_at (the later answer wins)';

-- Customers are written from session answers, so the same race could bring
-- back an old username or avatar: they are ordered the same way.
ALTER TABLE customers ADD COLUMN requested_at timestamptz;
UPDATE customers SET requested_at = fetched_at;
ALTER TABLE customers ALTER COLUMN requested_at SET NOT NULL;

-- During a rolling update, workers of the previous release still insert rows
-- without requested_at: give those their fetched_at, as the backfill did,
-- instead of refusing them (a refused row would dead-letter its event). The
-- WHEN clause keeps this release's inserts from calling the function at all.
CREATE FUNCTION requested_at_from_fetched_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.requested_at IS NULL THEN
        NEW.requested_at := NEW.fetched_at;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER message_sessions_requested_at BEFORE INSERT ON message_sessions
    FOR EACH ROW WHEN (NEW.requested_at IS NULL)
    EXECUTE FUNCTION requested_at_from_fetched_at();
CREATE TRIGGER customers_requested_at BEFORE INSERT ON customers
    FOR EACH ROW WHEN (NEW.requested_at IS NULL)
    EXECUTE FUNCTION requested_at_from_fetched_at();
