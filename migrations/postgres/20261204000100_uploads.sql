-- Uploads: the size of each stored original (for the per-player quota), the
-- uploads in progress, and the answers kept for retried uploads.

ALTER TABLE videos ADD COLUMN original_bytes bigint NOT NULL DEFAULT 0 CHECK (original_bytes >= 0);

-- An upload between the check of its file and the commit of its video row:
-- written before the original is stored, removed in the transaction that
-- records the video. A row left behind (the process died, the commit
-- failed) names an original that the clean-up removes after a grace period,
-- as it does any stored original with neither a video row nor a row here.
CREATE TABLE uploads_in_progress (
    video_id        uuid        PRIMARY KEY,
    owner_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    original_key    text        NOT NULL,
    original_bytes  bigint      NOT NULL CHECK (original_bytes >= 0),
    -- The client's `Idempotency-Key` and what the request held, if it sent one.
    idempotency_key text,
    fingerprint     text,
    started_at      timestamptz NOT NULL
);

-- One upload in progress per player and key.
CREATE UNIQUE INDEX uploads_in_progress_key ON uploads_in_progress (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX uploads_in_progress_by_owner ON uploads_in_progress (owner_id);
CREATE INDEX uploads_in_progress_started ON uploads_in_progress (started_at);

-- The first answer to an upload sent with an `Idempotency-Key`: a retry with
-- the same key and the same request gets it again, until `expires_at`.
CREATE TABLE upload_answers (
    owner_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    idempotency_key text        NOT NULL,
    fingerprint     text        NOT NULL,
    video_id        uuid        NOT NULL,
    task_id         text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (owner_id, idempotency_key)
);

CREATE INDEX upload_answers_expiry ON upload_answers (expires_at);
