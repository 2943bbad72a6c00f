-- Dead letters the worker has published (and the broker confirmed), by the
-- SHA-256 of the event body. When the ack that followed is lost (the broker
-- connection dropped in between), the broker redelivers the event; finding
-- it here, the worker acks it instead of dead-lettering it a second time.
-- Rows older than a day are removed as new ones are written.
CREATE TABLE dead_letters (
    body_sha256       bytea       PRIMARY KEY,
    reason            text        NOT NULL,
    dead_lettered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_age_idx ON dead_letters (dead_lettered_at);
