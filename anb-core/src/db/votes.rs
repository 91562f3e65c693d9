//! Votes, and the counters they maintain.

use uuid::Uuid;

use super::time::{DbTime, now};
use super::users::on_missing_user;
use super::{Conn, DbError};
use crate::domain::{UserId, VideoId};

/// The whole vote in one statement on PostgreSQL, run on its own (autocommit): one
/// round trip, where a transaction around it took three (`BEGIN`, the statement,
/// `COMMIT`). Each step runs only if the one before it did, and the outcome says which
/// step stopped. `FOR UPDATE` takes the video's row first and re-reads it: a deletion
/// committed meanwhile leaves `target` empty, and a deletion that comes later waits for
/// the vote, so a vote is counted exactly when it is stored. A statement that fails
/// (a voter deleted meanwhile) stores nothing.
const CAST_VOTE_POSTGRES: &str = "WITH target AS ( \
         SELECT owner_id FROM videos \
         WHERE id = $1 AND published_at IS NOT NULL AND deleted_at IS NULL \
         FOR UPDATE \
     ), ranking AS ( \
         SELECT player_id FROM player_rankings \
         WHERE player_id = (SELECT owner_id FROM target) \
     ), cast_vote AS ( \
         INSERT INTO votes (user_id, video_id, cast_at) \
         SELECT $2, $1, $3 FROM target JOIN ranking ON player_id = owner_id \
         WHERE owner_id <> $2 \
         ON CONFLICT (user_id, video_id) DO NOTHING \
         RETURNING video_id \
     ), counted AS ( \
         UPDATE videos SET vote_count = vote_count + 1 \
         WHERE id = (SELECT video_id FROM cast_vote) \
         RETURNING owner_id \
     ), ranked AS ( \
         UPDATE player_rankings SET votes = votes + 1 \
         WHERE player_id = (SELECT owner_id FROM counted) \
         RETURNING player_id \
     ) \
     SELECT (SELECT owner_id FROM target) AS owner, \
         EXISTS (SELECT 1 FROM ranking) AS has_ranking, \
         EXISTS (SELECT 1 FROM cast_vote) AS inserted, \
         EXISTS (SELECT 1 FROM ranked) AS ranked";

#[derive(sqlx::FromRow)]
struct VoteSteps {
    owner: Option<Uuid>,
    has_ranking: bool,
    inserted: bool,
    ranked: bool,
}

impl Conn<'_> {
    pub(crate) async fn cast_vote(&mut self, voter: UserId, video: VideoId) -> Result<(), DbError> {
        let Conn::Postgres(c) = self else {
            return self.cast_vote_in_steps(voter, video).await;
        };
        let steps: VoteSteps = sqlx::query_as(CAST_VOTE_POSTGRES)
            .bind(video.as_uuid())
            .bind(voter.as_uuid())
            .bind(DbTime(now()))
            .fetch_one(&mut **c)
            .await
            .map_err(on_missing_user)?;
        let owner = steps.owner.ok_or(DbError::VideoNotFound)?;
        if owner == voter.as_uuid() {
            return Err(DbError::OwnVideo);
        }
        // Without a ranking row the vote is not stored: nothing could count it.
        let no_ranking = || {
            DbError::CorruptData(format!(
                "player {owner} has a published video but no ranking row"
            ))
        };
        if !steps.has_ranking {
            return Err(no_ranking());
        }
        if !steps.inserted {
            return Err(DbError::AlreadyVoted);
        }
        if !steps.ranked {
            return Err(no_ranking());
        }
        Ok(())
    }

    /// The vote as separate statements (SQLite, in-process, where a statement costs no
    /// round trip).
    async fn cast_vote_in_steps(&mut self, voter: UserId, video: VideoId) -> Result<(), DbError> {
        let owner = fetch_scalar!(
            self,
            fetch_optional,
            Uuid,
            "SELECT owner_id FROM videos \
             WHERE id = $1 AND published_at IS NOT NULL AND deleted_at IS NULL",
            video.as_uuid(),
        )?
        .ok_or(DbError::VideoNotFound)?;
        if owner == voter.as_uuid() {
            return Err(DbError::OwnVideo);
        }
        // The primary key (user_id, video_id) decides: a concurrent second
        // vote waits for the first to commit, then inserts nothing.
        let inserted = execute!(
            self,
            "INSERT INTO votes (user_id, video_id, cast_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, video_id) DO NOTHING",
            voter.as_uuid(),
            video.as_uuid(),
            DbTime(now()),
        )
        .map_err(on_missing_user)?;
        if inserted == 0 {
            return Err(DbError::AlreadyVoted);
        }
        // The counters move in the same transaction as the vote, so the
        // rankings never need recounting.
        let counted = execute!(
            self,
            "UPDATE videos SET vote_count = vote_count + 1 WHERE id = $1 AND deleted_at IS NULL",
            video.as_uuid(),
        )?;
        if counted == 0 {
            return Err(DbError::VideoNotFound);
        }
        let ranked = execute!(
            self,
            "UPDATE player_rankings SET votes = votes + 1 WHERE player_id = $1",
            owner,
        )?;
        if ranked == 0 {
            return Err(DbError::CorruptData(format!(
                "player {owner} has a published video but no ranking row"
            )));
        }
        Ok(())
    }

    pub(crate) async fn voted_video_ids(&mut self, voter: UserId) -> Result<Vec<VideoId>, DbError> {
        let ids = fetch_scalar!(
            self,
            fetch_all,
            Uuid,
            "SELECT video_id FROM votes WHERE user_id = $1 ORDER BY cast_at DESC, video_id",
            voter.as_uuid(),
        )?;
        Ok(ids.into_iter().map(VideoId::from_uuid).collect())
    }
}
