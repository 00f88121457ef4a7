-- Customer-service messages pushed by WeChat, recorded before WeChat is answered and forwarded
-- to the app's help desk by a background forwarder (any node may deliver any row).
-- (appid, dedup_key) is unique: WeChat's retries of one message (same MsgId, or for events the
-- same FromUserName + CreateTime + Event) find the row already there and are not forwarded again.
-- state: 0 pending, 1 delivered, 2 abandoned (older than the 48-hour reply window).
-- next_attempt_at is both the back-off and the claim: a node that takes a row pushes it forward
-- by a lease, so no other node delivers it meanwhile; a crashed node's claim simply expires.
CREATE TABLE messages (
    id              BIGSERIAL PRIMARY KEY,
    appid           TEXT   NOT NULL,
    dedup_key       TEXT   NOT NULL,
    openid          TEXT   NOT NULL,
    msg_type        TEXT   NOT NULL,
    event           TEXT   NOT NULL DEFAULT '',
    content         TEXT   NOT NULL DEFAULT '',
    state           BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT   NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (appid, dedup_key)
);
CREATE INDEX messages_due ON messages (state, next_attempt_at);
