-- Users, videos, votes and the per-player ranking aggregate.
-- Same tables as the PostgreSQL history; types as SQLite stores them:
-- ids are 16-byte UUID blobs, timestamps whole microseconds since the Unix
-- epoch (they sort in time order), booleans 0/1.

CREATE TABLE users (
    id            BLOB    PRIMARY KEY NOT NULL,
    -- Lower-cased by the application, so uniqueness is case-insensitive.
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    first_name    TEXT    NOT NULL,
    last_name     TEXT    NOT NULL,
    city          TEXT    NOT NULL,
    -- The city folded for comparison (case and accents removed).
    city_key      TEXT    NOT NULL,
    country       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
) STRICT;

CREATE TABLE videos (
    id               BLOB    PRIMARY KEY NOT NULL,
    owner_id         BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title            TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('uploaded', 'processing', 'processed', 'failed')),
    failure_reason   TEXT,
    progress_percent INTEGER NOT NULL DEFAULT 0 CHECK (progress_percent BETWEEN 0 AND 100),
    -- The owner wants it published (now, or once processed).
    is_public        INTEGER NOT NULL CHECK (is_public IN (0, 1)),
    uploaded_at      INTEGER NOT NULL,
    processed_at     INTEGER,
    published_at     INTEGER,
    -- Set when the owner deletes it; the row goes once its objects are removed.
    deleted_at       INTEGER,
    original_key     TEXT    NOT NULL,
    processed_key    TEXT,
    thumbnail_key    TEXT,
    -- Maintained with each vote.
    vote_count       INTEGER NOT NULL DEFAULT 0 CHECK (vote_count >= 0),
    CONSTRAINT videos_published_only_when_processed CHECK (published_at IS NULL OR status = 'processed'),
    CONSTRAINT videos_failure_has_reason CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
) STRICT;

CREATE INDEX videos_by_owner ON videos (owner_id, uploaded_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX videos_published ON videos (published_at DESC, id DESC)
    WHERE published_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX videos_awaiting_purge ON videos (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE votes (
    user_id  BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    video_id BLOB    NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    cast_at  INTEGER NOT NULL,
    -- One vote per user per video, decided by the database.
    CONSTRAINT votes_one_per_user_per_video PRIMARY KEY (user_id, video_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX votes_by_video ON votes (video_id);

-- One row per player with at least one published video, updated in the
-- transaction of every vote, publication and deletion.
CREATE TABLE player_rankings (
    player_id        BLOB    PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    city_key         TEXT    NOT NULL,
    votes            INTEGER NOT NULL DEFAULT 0 CHECK (votes >= 0),
    published_videos INTEGER NOT NULL DEFAULT 0 CHECK (published_videos >= 0)
) STRICT;

CREATE INDEX player_rankings_overall ON player_rankings (votes DESC, player_id);
CREATE INDEX player_rankings_by_city ON player_rankings (city_key, votes DESC, player_id);
