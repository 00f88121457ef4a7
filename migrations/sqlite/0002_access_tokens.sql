-- Each app's current access token, shared by every node on this database so that nodes do not
-- invalidate each other's tokens. `version` makes writes compare-and-set; `lease_until` lets one
-- node at a time fetch a classic token. WeChat asks for at least 512 characters of storage.
CREATE TABLE access_tokens (
    appid       VARCHAR(64)   PRIMARY KEY,
    token       VARCHAR(1024) NOT NULL DEFAULT '',
    expires_at  BIGINT        NOT NULL DEFAULT 0,
    refresh_at  BIGINT        NOT NULL DEFAULT 0,
    version     BIGINT        NOT NULL DEFAULT 0,
    lease_until BIGINT        NOT NULL DEFAULT 0
);
