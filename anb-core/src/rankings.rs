//! The rankings as the public reads them: pages of the `player_rankings`
//! aggregate, kept for a fraction of a second so a popular page costs one
//! query however many read it.
//!
//! The product's rule is that a vote shows in the rankings within one second.
//! A page is read from the database, then served from this process's memory for
//! at most [`Rankings::max_age`]; with the default of 500 ms, an answer is at
//! most that plus one query old. Concurrent requests for a page that is not
//! held wait for the one query that loads it instead of each sending their own.
//!
//! A deep page is not read with `OFFSET`, whose cost grows with the depth:
//! from position [`SNAPSHOT_FROM`] on, a page is cut from a snapshot of the
//! whole order of the ranking (player ids and votes, read once in index order,
//! kept for the same age), and only its players' names are read. Every page
//! then costs about as much as the first, and a deep page is a consistent view
//! of the ranking as it was at most the age ago.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::db::{Database, DbError, RankedPlayer, RankingEntry};
use crate::domain::{CityKey, Pagination};

/// The longest a page may be kept: the freshness rule's one second.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(1);

/// The default time a page is kept.
pub const DEFAULT_CACHE_AGE: Duration = Duration::from_millis(500);

/// By default, pages that start at this position (0-based) or deeper are cut
/// from a snapshot of the order instead of read with an offset.
pub const SNAPSHOT_FROM: u64 = 1_000;

/// Pages held at once; beyond this the least used go first.
const MAX_PAGES: u64 = 10_000;

/// Players held in snapshots at once, all cities together (24 bytes each).
const MAX_SNAPSHOT_PLAYERS: u64 = 5_000_000;

type PageKey = (Option<CityKey>, Pagination);

/// Reads ranking pages through a short-lived cache.
#[derive(Clone)]
pub struct Rankings {
    db: Database,
    max_age: Duration,
    snapshot_from: u64,
    /// `None` when the age is zero: every page is read from the database.
    caches: Option<Caches>,
}

#[derive(Clone)]
struct Caches {
    pages: moka::future::Cache<PageKey, Arc<[RankingEntry]>>,
    /// The whole order, overall (`None`) or of one city.
    snapshots: moka::future::Cache<Option<CityKey>, Arc<[RankedPlayer]>>,
}

impl std::fmt::Debug for Rankings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rankings")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Rankings {
    /// Pages of `db`'s rankings, each kept for `max_age` (capped at
    /// [`MAX_CACHE_AGE`]); zero reads every page from the database.
    pub fn new(db: Database, max_age: Duration) -> Self {
        let max_age = max_age.min(MAX_CACHE_AGE);
        let caches = (!max_age.is_zero()).then(|| Caches {
            pages: moka::future::Cache::builder()
                .max_capacity(MAX_PAGES)
                .time_to_live(max_age)
                .build(),
            snapshots: moka::future::Cache::builder()
                .max_capacity(MAX_SNAPSHOT_PLAYERS)
                .weigher(|_, order: &Arc<[RankedPlayer]>| {
                    u32::try_from(order.len()).unwrap_or(u32::MAX).max(1)
                })
                .time_to_live(max_age)
                .build(),
        });
        Self {
            db,
            max_age,
            snapshot_from: SNAPSHOT_FROM,
            caches,
        }
    }

    /// Pages starting at `position` (0-based) or deeper are cut from a snapshot
    /// (default [`SNAPSHOT_FROM`]): lower it where a short ranking is read deep, raise
    /// it where reading the whole order costs more than an offset.
    pub fn snapshot_from(mut self, position: u64) -> Self {
        self.snapshot_from = position;
        self
    }

    /// How long a page is kept.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// One page of the ranking, overall or of one city (most votes first; ties
    /// go to the earlier sign-up).
    pub async fn page(
        &self,
        city: Option<&CityKey>,
        page: Pagination,
    ) -> Result<Arc<[RankingEntry]>, DbError> {
        let Some(caches) = &self.caches else {
            return Ok(self.db.rankings(city, page).await?.into());
        };
        shared_load(&caches.pages, (city.cloned(), page), || {
            self.load_page(caches, city, page)
        })
        .await
    }

    async fn load_page(
        &self,
        caches: &Caches,
        city: Option<&CityKey>,
        page: Pagination,
    ) -> Result<Arc<[RankingEntry]>, DbError> {
        let start = page.offset();
        if start < self.snapshot_from {
            return Ok(self.db.rankings(city, page).await?.into());
        }
        let order = shared_load(&caches.snapshots, city.cloned(), || async {
            Ok(self.db.ranked_players(city).await?.into())
        })
        .await?;
        let len = order.len() as u64;
        let from = start.min(len) as usize;
        let to = (start + u64::from(page.limit())).min(len) as usize;
        if from == to {
            return Ok(Arc::from([]));
        }
        Ok(self
            .db
            .ranking_entries(&order[from..to], start + 1)
            .await?
            .into())
    }
}

/// The value of `key` in `cache`, loaded by `load` when it is not held; concurrent
/// callers for one key wait for one load. A failed load is not kept. Its error is
/// shared by the callers that waited for it: the last one takes it; when the database
/// was unavailable the others answer the same outage at once (loading again would make
/// each of them wait out another connect timeout), otherwise they load again themselves.
async fn shared_load<K, V, F, Fut>(
    cache: &moka::future::Cache<K, V>,
    key: K,
    load: F,
) -> Result<V, DbError>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<V, DbError>>,
{
    match cache.try_get_with(key, load()).await {
        Ok(value) => Ok(value),
        Err(shared) => match Arc::try_unwrap(shared) {
            Ok(error) => Err(error),
            Err(shared) if shared.is_unavailable() => Err(DbError::Unavailable(shared.to_string())),
            Err(_) => load().await,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Callers waiting on one load that fails with the database out of reach all answer
    /// that outage: none loads again (each would wait out another connect timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_sharing_a_load_that_hit_an_outage_all_answer_it_without_loading_again() {
        let cache: moka::future::Cache<u32, u32> = moka::future::Cache::new(10);
        let loads = AtomicU32::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            Err::<u32, _>(DbError::Sqlx(sqlx::Error::PoolTimedOut))
        };
        let answers = futures::future::join_all((0..8).map(|_| shared_load(&cache, 1, load))).await;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "one load for eight callers"
        );
        assert!(
            answers
                .iter()
                .all(|answer| answer.as_ref().is_err_and(DbError::is_unavailable))
        );
        assert_eq!(cache.get(&1).await, None, "a failed load is not kept");
    }
}
