//! What the caller did: the videos they voted for.

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use crate::error::{ApiError, problems};
use crate::routes::ApiTags;
use crate::security::BearerAuth;
use crate::state::AppState;

/// The caller's own activity.
#[derive(Debug)]
pub struct MeApi;

#[derive(Debug, ApiResponse)]
pub enum MyVotesResponse {
    /// Ids of the videos the caller voted for, latest vote first.
    #[oai(status = 200)]
    Ok(Json<Vec<Uuid>>),
}

problems!(
    /// Failures.
    MyVotesProblems: 401
);

#[OpenApi(tag = "ApiTags::Auth")]
impl MeApi {
    /// Ids of the videos the caller voted for.
    #[oai(path = "/api/me/votes", method = "get", operation_id = "myVotes")]
    async fn my_votes(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<MyVotesResponse, MyVotesProblems> {
        let ids = state
            .db
            .voted_video_ids(auth.user_id())
            .await
            .map_err(ApiError::from)?;
        Ok(MyVotesResponse::Ok(Json(
            ids.into_iter().map(|id| id.as_uuid()).collect(),
        )))
    }
}
