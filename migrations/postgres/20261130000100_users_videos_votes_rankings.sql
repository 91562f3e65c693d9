-- Users, videos, votes and the per-player ranking aggregate.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Lower-cased by the application, so uniqueness is case-insensitive.
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    first_name    text        NOT NULL,
    last_name     text        NOT NULL,
    city          text        NOT NULL,
    -- The city folded for comparison (case and accents removed).
    city_key      text        NOT NULL,
    country       text        NOT NULL,
    created_at    timestamptz NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE videos (
    id               uuid        PRIMARY KEY,
    owner_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title            text        NOT NULL,
    status           text        NOT NULL
        CHECK (status IN ('uploaded', 'processing', 'processed', 'failed')),
    failure_reason   text,
    progress_percent integer     NOT NULL DEFAULT 0 CHECK (progress_percent BETWEEN 0 AND 100),
    -- The owner wants it published (now, or once processed).
    is_public        boolean     NOT NULL,
    uploaded_at      timestamptz NOT NULL,
    processed_at     timestamptz,
    published_at     timestamptz,
    -- Set when the owner deletes it; the row goes once its objects are removed.
    deleted_at       timestamptz,
    original_key     text        NOT NULL,
    processed_key    text,
    thumbnail_key    text,
    -- Maintained with each vote.
    vote_count       bigint      NOT NULL DEFAULT 0 CHECK (vote_count >= 0),
    CONSTRAINT videos_published_only_when_processed CHECK (published_at IS NULL OR status = 'processed'),
    CONSTRAINT videos_failure_has_reason CHECK ((status = 'failed') = (failure_reason IS NOT NULL))
);

CREATE INDEX videos_by_owner ON videos (owner_id, uploaded_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX videos_published ON videos (published_at DESC, id DESC)
    WHERE published_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX videos_awaiting_purge ON videos (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE votes (
    user_id  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    video_id uuid        NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    cast_at  timestamptz NOT NULL,
    -- One vote per user per video, decided by the database.
    CONSTRAINT votes_one_per_user_per_video PRIMARY KEY (user_id, video_id)
);

CREATE INDEX votes_by_video ON votes (video_id);

-- One row per player with at least one published video, updated in the
-- transaction of every vote, publication and deletion.
CREATE TABLE player_rankings (
    player_id        uuid   PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    city_key         text   NOT NULL,
    votes            bigint NOT NULL DEFAULT 0 CHECK (votes >= 0),
    published_videos bigint NOT NULL DEFAULT 0 CHECK (published_videos >= 0)
);

CREATE INDEX player_rankings_overall ON player_rankings (votes DESC, player_id);
CREATE INDEX player_rankings_by_city ON player_rankings (city_key, votes DESC, player_id);
