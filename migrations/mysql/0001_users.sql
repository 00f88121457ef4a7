-- One row per mini-program user: identity from WeChat, the one live session, profile and mobile.
-- token_hash is SHA-256 of the session token (hex): a leaked database leaks no live session.
-- VARCHAR rather than TEXT: sqlx's Any driver reads MySQL TEXT columns as bytes.
CREATE TABLE users (
    id                BIGINT AUTO_INCREMENT PRIMARY KEY,
    appid             VARCHAR(64)   NOT NULL,
    openid            VARCHAR(128)  NOT NULL,
    unionid           VARCHAR(128),
    session_key       VARCHAR(64)   NOT NULL,
    token_hash        CHAR(64),
    expires_at        BIGINT        NOT NULL,
    nickname          VARCHAR(255),
    avatar_url        VARCHAR(1024),
    phone_number      VARCHAR(32),
    pure_phone_number VARCHAR(32),
    country_code      VARCHAR(8),
    created_at        BIGINT        NOT NULL,
    updated_at        BIGINT        NOT NULL,
    UNIQUE KEY users_app_openid (appid, openid),
    UNIQUE KEY users_token_hash (token_hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Node-wide settings shared by every mpapi node on this database (the token-signing key).
CREATE TABLE settings (
    name  VARCHAR(64) PRIMARY KEY,
    value VARCHAR(255) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
