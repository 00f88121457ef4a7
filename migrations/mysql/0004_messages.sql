-- Customer-service messages pushed by WeChat, recorded before WeChat is answered and forwarded
-- to the app's help desk by a background forwarder (any node may deliver any row).
-- (appid, dedup_key) is unique: WeChat's retries of one message (same MsgId, or for events the
-- same FromUserName + CreateTime + Event) find the row already there and are not forwarded again.
-- state: 0 pending, 1 delivered, 2 abandoned (older than the 48-hour reply window).
-- next_attempt_at is both the back-off and the claim: a node that takes a row pushes it forward
-- by a lease, so no other node delivers it meanwhile; a crashed node's claim simply expires.
-- VARCHAR rather than TEXT: sqlx's Any driver reads MySQL TEXT columns as bytes.
CREATE TABLE messages (
    id              BIGINT AUTO_INCREMENT PRIMARY KEY,
    appid           VARCHAR(64)   NOT NULL,
    dedup_key       VARCHAR(255)  NOT NULL,
    openid          VARCHAR(128)  NOT NULL,
    msg_type        VARCHAR(32)   NOT NULL,
    event           VARCHAR(64)   NOT NULL DEFAULT '',
    content         VARCHAR(8192) NOT NULL DEFAULT '',
    state           BIGINT        NOT NULL DEFAULT 0,
    attempts        BIGINT        NOT NULL DEFAULT 0,
    next_attempt_at BIGINT        NOT NULL,
    last_error      VARCHAR(255)  NOT NULL DEFAULT '',
    created_at      BIGINT        NOT NULL,
    updated_at      BIGINT        NOT NULL,
    UNIQUE KEY messages_app_dedup (appid, dedup_key),
    KEY messages_due (state, next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
