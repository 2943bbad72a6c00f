-- The enriched tables routing engines read. A public contract: add columns,
-- never rename or drop them without a deprecation period.

-- One row per message session per PBX, as message_session/get last described
-- it. Optional text the PBX sent as "" is stored as NULL.
CREATE TABLE message_sessions (
    pbx                 text        NOT NULL,
    session_id          bigint      NOT NULL CHECK (session_id > 0),
    channel_type        text,       -- sms | whatsapp | facebook | livechat (kept as sent)
    channel_name        text,
    did_number          text,
    to_number           text,
    origin              text,       -- 'campaign', or NULL when started by an extension user or the API
    page_name           text,       -- Facebook only
    website_domain      text,       -- Live Chat only
    customer_user_type  integer,    -- -> customers(user_type)
    customer_user_no    text,       -- -> customers(user_no)
    prechat_name        text,       -- Live Chat pre-chat form
    prechat_email       text,
    prechat_phone       text,
    prechat_first_name  text,
    prechat_last_name   text,
    raw                 jsonb       NOT NULL,  -- the Session_Info object as received
    fetched_at          timestamptz NOT NULL,  -- when the PBX answered; a write older than this changes nothing
    missing_at          timestamptz,           -- set when the PBX said the session no longer exists
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pbx, session_id)
);

CREATE INDEX message_sessions_customer_idx
    ON message_sessions (pbx, customer_user_type, customer_user_no);

-- External customers, keyed as the API keys them (user_id is always 0).
CREATE TABLE customers (
    pbx         text        NOT NULL,
    user_type   integer     NOT NULL,  -- 2 SMS, 3 WhatsApp, 4 Facebook, 5 Live Chat, 8 campaign recipient
    user_no     text        NOT NULL,
    username    text,
    avatar      text,
    fetched_at  timestamptz NOT NULL,  -- newest PBX answer this row reflects
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pbx, user_type, user_no)
);

-- Who a queued, not yet picked-up session is offered to. Replaced as a set on
-- every fetch: a picked-up session has no rows here.
CREATE TABLE session_pending_agents (
    pbx             text        NOT NULL,
    session_id      bigint      NOT NULL,
    agent_user_id   bigint      NOT NULL,
    agent_user_no   text,
    agent_username  text,
    agent_avatar    text,
    position        integer     NOT NULL,  -- 0-based order in the participants list
    first_seen_at   timestamptz NOT NULL DEFAULT now(),  -- kept across updates
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pbx, session_id, agent_user_id),
    FOREIGN KEY (pbx, session_id) REFERENCES message_sessions (pbx, session_id) ON DELETE CASCADE
);

-- "Which sessions are pending for agent X?"
CREATE INDEX session_pending_agents_agent_idx
    ON session_pending_agents (pbx, agent_user_id, session_id);
