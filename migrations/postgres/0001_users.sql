-- One row per mini-program user: identity from WeChat, the one live session, profile and mobile.
-- token_hash is SHA-256 of the session token (hex): a leaked database leaks no live session.
CREATE TABLE users (
    id                BIGSERIAL PRIMARY KEY,
    appid             TEXT   NOT NULL,
    openid            TEXT   NOT NULL,
    unionid           TEXT,
    session_key       TEXT   NOT NULL,
    token_hash        TEXT,
    expires_at        BIGINT NOT NULL,
    nickname          TEXT,
    avatar_url        TEXT,
    phone_number      TEXT,
    pure_phone_number TEXT,
    country_code      TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (appid, openid)
);
CREATE UNIQUE INDEX users_token_hash ON users (token_hash);

-- Node-wide settings shared by every mpapi node on this database (the token-signing key).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
