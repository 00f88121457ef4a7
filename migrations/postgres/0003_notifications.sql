-- Subscribe messages queued by POST /notify, sent by the dispatcher of any node.
-- state: pending -> sending -> sent | failed, or pending -> cancelled.
-- A node claims a due row (pending, next_attempt_at reached) by setting it to sending with its
-- own claim_id and a lease (lease_until); only the holder of that claim writes the result, and
-- a lease that expires returns the row to pending. attempts counts claims (sends started).
-- data is the subscribe-message data as JSON ({"key":{"value":"…"}}). Times are Unix seconds.
CREATE TABLE notifications (
    id                BIGSERIAL PRIMARY KEY,
    appid             TEXT    NOT NULL,
    user_id           BIGINT  NOT NULL,
    openid            TEXT    NOT NULL,
    template_id       TEXT    NOT NULL,
    page              TEXT,
    data              TEXT    NOT NULL,
    miniprogram_state TEXT,
    lang              TEXT,
    description       TEXT,
    state             TEXT    NOT NULL,
    active_at         BIGINT  NOT NULL,
    next_attempt_at   BIGINT  NOT NULL,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    last_errcode      BIGINT,
    last_error        TEXT,
    claim_id          TEXT,
    lease_until       BIGINT  NOT NULL DEFAULT 0,
    sent_at           BIGINT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
-- The dispatcher's scans: due pending rows, and sending rows whose lease expired.
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
