//! The rankings as the public reads them: pages of the `player_rankings`
//! aggregate, kept for a fraction of a second so a popular page costs one
//! query however many read it.
//!
//! The product's rule is that a vote shows in the rankings within one second.
//! A page is read from the database, then served from this process's memory for
//! at most [`Rankings::max_age`]; with the default of 500 ms, an answer is at
//! most that plus one query old. Concurrent requests for a page that is not
//! held wait for the one query that loads it instead of each sending their own.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{Database, DbError, RankingEntry};
use crate::domain::{CityKey, Pagination};

/// The longest a page may be kept: the freshness rule's one second.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(1);

/// The default time a page is kept.
pub const DEFAULT_CACHE_AGE: Duration = Duration::from_millis(500);

/// Pages held at once; beyond this the least used go first.
const MAX_PAGES: u64 = 10_000;

type PageKey = (Option<CityKey>, Pagination);

/// Reads ranking pages through a short-lived cache.
#[derive(Clone)]
pub struct Rankings {
    db: Database,
    max_age: Duration,
    pages: Option<moka::future::Cache<PageKey, Arc<[RankingEntry]>>>,
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
        let pages = (!max_age.is_zero()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(MAX_PAGES)
                .time_to_live(max_age)
                .build()
        });
        Self { db, max_age, pages }
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
        let Some(pages) = &self.pages else {
            return Ok(self.db.rankings(city, page).await?.into());
        };
        let loaded = pages
            .try_get_with((city.cloned(), page), async {
                self.db
                    .rankings(city, page)
                    .await
                    .map(Arc::<[RankingEntry]>::from)
            })
            .await;
        match loaded {
            Ok(entries) => Ok(entries),
            // A failed load is not kept. Its error is shared by the requests that waited
            // for it; the last one takes it, the others ask the database themselves, so
            // each answer carries an error of its own (an outage still answers fast).
            Err(shared) => match Arc::try_unwrap(shared) {
                Ok(error) => Err(error),
                Err(_) => Ok(self.db.rankings(city, page).await?.into()),
            },
        }
    }
}
