//! Player rankings, read from the `player_rankings` aggregate that every
//! vote, publication and deletion keeps up to date.

use uuid::Uuid;

use super::videos::offset;
use super::{Conn, DbError, RankedPlayer, RankingEntry};
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
//
// The inner query takes one page of the aggregate in index order
// (`player_rankings_ranked`, or `…_ranked_by_city` under the city filter,
// which hold exactly the ranked rows), so a deep page walks index entries
// instead of sorting every player. Names and cities are then looked up by
// primary key for the page's rows alone: as a join, PostgreSQL may hash the
// whole users table for a 50-row page, whereas scalar subqueries outside the
// LIMIT run once per returned row on either engine.
const OVERALL: &str = "SELECT r.player_id, \
         (SELECT first_name FROM users WHERE id = r.player_id) AS first_name, \
         (SELECT last_name FROM users WHERE id = r.player_id) AS last_name, \
         (SELECT city FROM users WHERE id = r.player_id) AS city, \
         r.votes \
     FROM (SELECT player_id, votes FROM player_rankings \
           WHERE published_videos > 0 \
           ORDER BY votes DESC, player_id \
           LIMIT $1 OFFSET $2) AS r \
     ORDER BY r.votes DESC, r.player_id";

const IN_CITY: &str = "SELECT r.player_id, \
         (SELECT first_name FROM users WHERE id = r.player_id) AS first_name, \
         (SELECT last_name FROM users WHERE id = r.player_id) AS last_name, \
         (SELECT city FROM users WHERE id = r.player_id) AS city, \
         r.votes \
     FROM (SELECT player_id, votes FROM player_rankings \
           WHERE published_videos > 0 AND city_key = $3 \
           ORDER BY votes DESC, player_id \
           LIMIT $1 OFFSET $2) AS r \
     ORDER BY r.votes DESC, r.player_id";

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

// The whole order of the ranking, without names: what a snapshot of the
// ranking holds (`crate::rankings`). Read in index order, like a page.
const ORDER_OVERALL: &str = "SELECT player_id, votes FROM player_rankings \
     WHERE published_videos > 0 ORDER BY votes DESC, player_id";

const ORDER_IN_CITY: &str = "SELECT player_id, votes FROM player_rankings \
     WHERE published_videos > 0 AND city_key = $1 ORDER BY votes DESC, player_id";

#[derive(sqlx::FromRow)]
struct RankedRow {
    player_id: Uuid,
    votes: i64,
}

#[derive(sqlx::FromRow)]
struct PlayerNames {
    id: Uuid,
    first_name: String,
    last_name: String,
    city: String,
}

impl Conn<'_> {
    pub(crate) async fn ranked_players(
        &mut self,
        city: Option<&CityKey>,
    ) -> Result<Vec<RankedPlayer>, DbError> {
        let rows = match city {
            None => fetch!(self, fetch_all, RankedRow, ORDER_OVERALL)?,
            Some(city) => fetch!(self, fetch_all, RankedRow, ORDER_IN_CITY, city.as_str())?,
        };
        Ok(rows
            .into_iter()
            .map(|row| RankedPlayer {
                player_id: UserId::from_uuid(row.player_id),
                votes: row.votes,
            })
            .collect())
    }

    pub(crate) async fn ranking_entries(
        &mut self,
        players: &[RankedPlayer],
        first_position: u64,
    ) -> Result<Vec<RankingEntry>, DbError> {
        if players.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = players.iter().map(|p| p.player_id.as_uuid()).collect();
        let names: Vec<PlayerNames> = match self {
            Conn::Postgres(c) => {
                sqlx::query_as(
                    "SELECT id, first_name, last_name, city FROM users WHERE id = ANY($1)",
                )
                .bind(&ids)
                .fetch_all(&mut **c)
                .await?
            }
            Conn::Sqlite(c) => {
                let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "SELECT id, first_name, last_name, city FROM users WHERE id IN (",
                );
                let mut list = query.separated(", ");
                for id in &ids {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build_query_as().fetch_all(&mut **c).await?
            }
        };
        let mut names: std::collections::HashMap<Uuid, PlayerNames> =
            names.into_iter().map(|row| (row.id, row)).collect();
        // A player whose account went away since the snapshot is left out.
        Ok(players
            .iter()
            .zip(first_position..)
            .filter_map(|(player, position)| {
                let row = names.remove(&player.player_id.as_uuid())?;
                Some(RankingEntry {
                    position,
                    player_id: player.player_id,
                    first_name: row.first_name,
                    last_name: row.last_name,
                    city: row.city,
                    votes: player.votes,
                })
            })
            .collect())
    }
}
