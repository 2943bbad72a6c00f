-- Live state for routing engines (issue 11). The PBX sends no event when a
-- session is picked up, so a session with pending agents is fetched again
-- on a timer until nobody is pending; and readers learn of changes from a
-- change feed (NOTIFY session_enricher_changes) or by polling updated_at,
-- which now moves only when a session's content changes.

-- When the current stretch of having pending agents began (the first
-- accepted answer listing any, after one listing none); NULL while nobody
-- is pending, and for a missing session. Refreshing stops for a session
-- that has been waiting longer than 24 hours (see refresh_due_at).
ALTER TABLE message_sessions ADD COLUMN waiting_since timestamptz;
COMMENT ON COLUMN message_sessions.waiting_since IS
    'when the current stretch of having pending agents began; NULL when none are pending or the session is missing';

-- When this session is next to be fetched without an event; NULL when it is
-- not to be refreshed: nobody pending, missing, waiting for more than 24
-- hours, or refreshing is off (ENRICHER_REFRESH_INTERVAL_MS=0). Every
-- accepted write sets it (now() + the interval, or NULL); a replica that
-- claims a due session pushes it to now() + a lease, so others leave the
-- session alone while it is fetched, and take it over if that replica dies.
ALTER TABLE message_sessions ADD COLUMN refresh_due_at timestamptz;
COMMENT ON COLUMN message_sessions.refresh_due_at IS
    'when the worker is next to fetch this session without an event; NULL: not to be refreshed';

-- Rows written before this migration: a session listing pending agents has
-- waited since its oldest pending agent was first seen (a lower bound), and
-- is due for a refresh at once unless that is more than 24 hours ago. A
-- worker with refreshing off clears the due time on the next write.
UPDATE message_sessions m
   SET waiting_since = w.since,
       refresh_due_at = CASE WHEN w.since >= now() - interval '24 hours' THEN now() END
  FROM (SELECT pbx, session_id, min(first_seen_at) AS since
          FROM session_pending_agents GROUP BY pbx, session_id) w
 WHERE m.pbx = w.pbx AND m.session_id = w.session_id AND m.missing_at IS NULL;

-- The refresh loop's claim: "due sessions of this PBX, oldest due first".
-- Partial: only sessions to be refreshed are in it, so it stays small.
CREATE INDEX message_sessions_refresh_due_idx
    ON message_sessions (pbx, refresh_due_at) WHERE refresh_due_at IS NOT NULL;

-- "What changed since T?" for readers that poll instead of listening.
CREATE INDEX message_sessions_updated_idx
    ON message_sessions (pbx, updated_at);

-- "Which sessions are waiting for extension 1003?": readers know agents by
-- extension number (agent_user_no); the existing index is by user id.
CREATE INDEX session_pending_agents_agent_no_idx
    ON session_pending_agents (pbx, agent_user_no, session_id);
