-- Subscribe messages queued by POST /notify, sent by the dispatcher of any node.
-- state: pending -> sending -> sent | failed, or pending -> cancelled.
-- A node claims a due row (pending, next_attempt_at reached) by setting it to sending with its
-- own claim_id and a lease (lease_until); only the holder of that claim writes the result, and
-- a lease that expires returns the row to pending. attempts counts claims (sends started).
-- data is the subscribe-message data as JSON ({"key":{"value":"…"}}). Times are Unix seconds.
-- VARCHAR rather than TEXT: sqlx's Any driver reads MySQL TEXT columns as bytes.
CREATE TABLE notifications (
    id                BIGINT AUTO_INCREMENT PRIMARY KEY,
    appid             VARCHAR(64)   NOT NULL,
    user_id           BIGINT        NOT NULL,
    openid            VARCHAR(128)  NOT NULL,
    template_id       VARCHAR(128)  NOT NULL,
    page              VARCHAR(1024),
    data              VARCHAR(8192) NOT NULL,
    miniprogram_state VARCHAR(16),
    lang              VARCHAR(16),
    description       VARCHAR(255),
    state             VARCHAR(16)   NOT NULL,
    active_at         BIGINT        NOT NULL,
    next_attempt_at   BIGINT        NOT NULL,
    attempts          BIGINT        NOT NULL DEFAULT 0,
    last_errcode      BIGINT,
    last_error        VARCHAR(512),
    claim_id          VARCHAR(64),
    lease_until       BIGINT        NOT NULL DEFAULT 0,
    sent_at           BIGINT,
    created_at        BIGINT        NOT NULL,
    updated_at        BIGINT        NOT NULL,
    -- The dispatcher's scans: due pending rows, and sending rows whose lease expired.
    KEY notifications_due (state, next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
