//! The public showcase: published videos, votes and rankings.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, problems};
use crate::rate_limit::ClientIp;
use crate::routes::params::{CityFilter, Limit, Page, VideoIdParam, pagination};
use crate::routes::videos::parse_video_id;
use crate::routes::{ApiTags, utc};
use crate::security::BearerAuth;
use crate::state::AppState;

/// Published videos, votes and rankings.
#[derive(Debug)]
pub struct PublicApi;

/// A published video.
#[derive(Debug, Object)]
pub struct PublicVideoDto {
    pub video_id: Uuid,
    pub title: String,
    pub player_id: Uuid,
    /// First and last name.
    pub player_name: String,
    pub city: String,
    /// Playable URL of the processed video (expires).
    #[oai(nullable)]
    pub processed_url: Option<String>,
    #[oai(nullable)]
    pub thumbnail_url: Option<String>,
    pub votes: i64,
    pub published_at: OffsetDateTime,
}

#[derive(Debug, ApiResponse)]
pub enum PublicVideosResponse {
    /// One page of published videos, newest first.
    #[oai(status = 200)]
    Ok(
        Json<Vec<PublicVideoDto>>,
        /// How many published videos all pages hold together.
        #[oai(header = "X-Total-Count")]
        u64,
    ),
}

problems!(
    /// Bad `page` or `limit`.
    PublicVideosProblems: 400
);

#[derive(Debug, Object)]
pub struct VoteRecorded {
    pub message: String,
}

#[derive(Debug, ApiResponse)]
pub enum VoteResponse {
    #[oai(status = 200)]
    Ok(Json<VoteRecorded>),
}

problems!(
    /// Vote failures: already voted or own video (400), video not votable (404).
    VoteProblems: 400, 401, 404, 429
);

/// A player's place in the rankings.
#[derive(Debug, Object)]
pub struct RankingEntryDto {
    /// 1-based, over the whole (filtered) ranking.
    pub position: u64,
    /// The player's first and last name.
    pub username: String,
    pub city: String,
    pub votes: i64,
    pub player_id: Uuid,
}

#[derive(Debug, ApiResponse)]
pub enum RankingsResponse {
    #[oai(status = 200)]
    Ok(Json<Vec<RankingEntryDto>>),
}

problems!(
    /// Bad `city`, `page` or `limit`.
    RankingsProblems: 400
);

#[OpenApi(tag = "ApiTags::Public")]
impl PublicApi {
    /// Published videos with their players, newest first.
    #[oai(
        path = "/api/public/videos",
        method = "get",
        operation_id = "listPublicVideos"
    )]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Page number, from 1.
        page: Query<Option<Page>>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<Limit>>,
    ) -> Result<PublicVideosResponse, PublicVideosProblems> {
        let pagination = pagination(page.0, limit.0);
        let listed = state
            .db
            .list_public_videos(pagination)
            .await
            .map_err(ApiError::from)?;
        let mut items = Vec::with_capacity(listed.items.len());
        for video in listed.items {
            items.push(PublicVideoDto {
                video_id: video.id.as_uuid(),
                processed_url: state.media_url(video.processed_key.as_deref()).await,
                thumbnail_url: state.media_url(video.thumbnail_key.as_deref()).await,
                title: video.title,
                player_id: video.player_id.as_uuid(),
                player_name: format!("{} {}", video.player_first_name, video.player_last_name),
                city: video.player_city,
                votes: video.votes,
                published_at: utc(video.published_at),
            });
        }
        Ok(PublicVideosResponse::Ok(Json(items), listed.total))
    }

    /// Vote for a published video (once per user and video).
    #[oai(
        path = "/api/public/videos/:video_id/vote",
        method = "post",
        operation_id = "vote"
    )]
    async fn vote(
        &self,
        state: Data<&AppState>,
        client: Data<&ClientIp>,
        auth: BearerAuth,
        video_id: Path<VideoIdParam>,
    ) -> Result<VoteResponse, VoteProblems> {
        let id = parse_video_id(&video_id)?;
        state
            .limiters
            .vote_per_user
            .check(&auth.user_id().to_string())?;
        state.limiters.vote_per_ip.check(&client.0.0)?;
        anb_core::videos::vote(&state.db, auth.user_id(), id)
            .await
            .map_err(ApiError::from)?;
        Ok(VoteResponse::Ok(Json(VoteRecorded {
            message: "Voto registrado exitosamente.".into(),
        })))
    }

    /// Players ranked by votes on their published videos.
    #[oai(
        path = "/api/public/rankings",
        method = "get",
        operation_id = "rankings"
    )]
    async fn rankings(
        &self,
        state: Data<&AppState>,
        /// Only players of this city (case, accents and punctuation ignored;
        /// at most 100 characters, with a letter or digit).
        city: Query<Option<CityFilter>>,
        /// Page number, from 1.
        page: Query<Option<Page>>,
        /// Page size, 1–100 (default 20).
        limit: Query<Option<Limit>>,
    ) -> Result<RankingsResponse, RankingsProblems> {
        let pagination = pagination(page.0, limit.0);
        let city = city.0.and_then(|filter| filter.0);
        let entries = state
            .rankings
            .page(city.as_ref(), pagination)
            .await
            .map_err(ApiError::from)?;
        Ok(RankingsResponse::Ok(Json(
            entries
                .iter()
                .map(|entry| RankingEntryDto {
                    position: entry.position,
                    username: format!("{} {}", entry.first_name, entry.last_name),
                    city: entry.city.clone(),
                    votes: entry.votes,
                    player_id: entry.player_id.as_uuid(),
                })
                .collect(),
        )))
    }
}
