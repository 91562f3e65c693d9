-- Access tokens revoked before they expire (log-out), by token id (`jti`).
-- A row is needed only while its token could still be presented: rows whose
-- `expires_at` has passed are pruned.

CREATE TABLE revoked_tokens (
    token_id   uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
