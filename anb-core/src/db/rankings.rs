//! Player rankings, read from the `player_rankings` aggregate that every
//! vote, publication and deletion keeps up to date.

use uuid::Uuid;

use super::videos::offset;
use super::{Conn, DbError, RankingEntry};
use crate::domain::{CityKey, Pagination, UserId};

#[derive(sqlx::FromRow)]
struct RankingRow {
    player_id: Uuid,
    first_name: String,
    last_name: String,
    city: String,
    votes: i64,
}

// Ties are broken by player id: ids are time-ordered (UUIDv7), so the earlier
// sign-up ranks first, and the order never depends on the query plan.
const OVERALL: &str = "SELECT r.player_id, u.first_name, u.last_name, u.city, r.votes \
     FROM player_rankings r JOIN users u ON u.id = r.player_id \
     WHERE r.published_videos > 0 \
     ORDER BY r.votes DESC, r.player_id \
     LIMIT $1 OFFSET $2";

const IN_CITY: &str = "SELECT r.player_id, u.first_name, u.last_name, u.city, r.votes \
     FROM player_rankings r JOIN users u ON u.id = r.player_id \
     WHERE r.published_videos > 0 AND r.city_key = $3 \
     ORDER BY r.votes DESC, r.player_id \
     LIMIT $1 OFFSET $2";

impl Conn<'_> {
    pub(crate) async fn rankings(
        &mut self,
        city: Option<&CityKey>,
        page: Pagination,
    ) -> Result<Vec<RankingEntry>, DbError> {
        let limit = i64::from(page.limit());
        let rows = match city {
            None => fetch!(self, fetch_all, RankingRow, OVERALL, limit, offset(page))?,
            Some(city) => fetch!(
                self,
                fetch_all,
                RankingRow,
                IN_CITY,
                limit,
                offset(page),
                city.as_str()
            )?,
        };
        Ok(rows
            .into_iter()
            .zip(page.offset() + 1..)
            .map(|(row, position)| RankingEntry {
                position,
                player_id: UserId::from_uuid(row.player_id),
                first_name: row.first_name,
                last_name: row.last_name,
                city: row.city,
                votes: row.votes,
            })
            .collect())
    }
}
