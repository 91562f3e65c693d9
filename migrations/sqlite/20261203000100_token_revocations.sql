-- Access tokens revoked before they expire (log-out), by token id (`jti`).
-- A row is needed only while its token could still be presented: rows whose
-- `expires_at` has passed are pruned. Types as in the other SQLite tables.

CREATE TABLE revoked_tokens (
    token_id   BLOB    PRIMARY KEY NOT NULL,
    user_id    BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
