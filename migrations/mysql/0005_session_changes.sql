-- Cached sessions other nodes must forget: a token retired by a login or a logout, or a session
-- whose profile or mobile changed. Written by a node after the change; every MySQL node polls
-- it (id > last seen) and drops those sessions from its cache. PostgreSQL nodes use NOTIFY on
-- the channel mpapi_sessions instead, and SQLite serves one node: the table stays empty there,
-- kept so every database has the same migrations. Rows older than a few minutes are purged.
CREATE TABLE session_changes (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    origin      VARCHAR(32) NOT NULL,
    token_hash  CHAR(64)    NOT NULL,
    created_at  BIGINT      NOT NULL
);
CREATE INDEX session_changes_created ON session_changes (created_at);
