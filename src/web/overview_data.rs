//! What the residents overview reads — every resident with their newest values,
//! the SpO₂ scales, the most urgent open alerts and their count — kept between
//! two changes of the store or the alert book, so that 50 staff screens asking
//! for the page do not each read the same rows (and each make a trip to a
//! blocking thread to do so).
//!
//! The key is three change counters: the store writer's commits and registry
//! changes (`StoreStats`; the writer is the only writer of `residents` and
//! `latest`, and counts each commit after it, with `Release`) and the alert
//! book's generation (bumped by every method that writes it). The counters are
//! read *before* the rows, so rows cached under a key are at least as new as
//! that key: a change committed after the read bumps a counter, and the next
//! request reads again. Only time moves the page between changes, and the page
//! is rendered from these rows at the request's own `now` (ages, STALE marks;
//! see `tile_cache`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{AppState, WebError, read};
use crate::clinical::news2::Spo2Scale;
use crate::store::{OpenAlerts, ResidentOverview, StoreError, StoreStats};

/// The change counters a snapshot was read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    commits: u64,
    registry: u64,
    book: u64,
}

/// The overview's rows at one key.
#[derive(Clone)]
pub struct Snapshot {
    key: Key,
    pub residents: Arc<Vec<ResidentOverview>>,
    pub scales: Arc<HashMap<i64, Spo2Scale>>,
    /// The most urgent open alerts (`pages::OVERVIEW_ALERTS`) and the count.
    pub alerts: Arc<OpenAlerts>,
}

/// The last snapshot and the rendered tiles, per application
/// (`AppState::overview`).
#[derive(Default)]
pub struct OverviewData {
    /// The tiles as last rendered (see `tile_cache`).
    pub tiles: super::tile_cache::TileCache,
    last: Mutex<Option<Snapshot>>,
    /// One reader at a time: the others wait for its snapshot instead of all
    /// reading the same rows after each commit.
    refill: tokio::sync::Mutex<()>,
    /// The alert book's generation counter, known after the first read.
    book: OnceLock<Arc<AtomicU64>>,
    /// Reads of the store made, for tests.
    reads: AtomicU64,
}

/// What one request gets: the snapshot, or the rows of this request's own read
/// when part of it failed (not kept; the page says what is missing).
pub enum Overview {
    Snapshot(Snapshot),
    Partial {
        residents: Vec<ResidentOverview>,
        scales: Result<HashMap<i64, Spo2Scale>, StoreError>,
        alerts: Result<OpenAlerts, StoreError>,
    },
}

impl OverviewData {
    fn key_now(&self, stats: &StoreStats) -> Option<Key> {
        let book = self.book.get()?.load(Ordering::Acquire);
        Some(Key {
            commits: stats.commits.load(Ordering::Acquire),
            registry: stats.registry_changes.load(Ordering::Acquire),
            book,
        })
    }

    fn hit(&self, stats: &StoreStats) -> Option<Snapshot> {
        let key = self.key_now(stats)?;
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|s| s.key == key).cloned()
    }

    /// Reads of the store made so far.
    #[cfg(test)]
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The rows as of now: the kept snapshot when no counter has moved since it
    /// was read, else a new read (kept when every part of it succeeded).
    pub async fn get(&self, state: &AppState) -> Result<Overview, WebError> {
        let stats = state.store.stats().clone();
        if let Some(s) = self.hit(&stats) {
            return Ok(Overview::Snapshot(s));
        }
        let _one = self.refill.lock().await;
        if let Some(s) = self.hit(&stats) {
            return Ok(Overview::Snapshot(s));
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let book = state.alerts.clone();
        let (store_key, residents, generation, book_key, scales, alerts) =
            read(&state.reader, move |r| {
                // The counters before the rows (see the module documentation).
                let store_key = (
                    stats.commits.load(Ordering::Acquire),
                    stats.registry_changes.load(Ordering::Acquire),
                );
                let residents = r.residents_overview()?;
                let book = book.lock().unwrap_or_else(|p| p.into_inner());
                // Under the book's lock: no write can fall between the two.
                let generation = book.generation();
                let book_key = generation.load(Ordering::Acquire);
                Ok((
                    store_key,
                    residents,
                    generation,
                    book_key,
                    book.spo2_scales(),
                    book.most_urgent_open(super::pages::OVERVIEW_ALERTS),
                ))
            })
            .await?;
        // The same book for the life of the state; a second `set` is a no-op.
        let _ = self.book.set(generation);
        let (scales, alerts) = match (scales, alerts) {
            (Ok(scales), Ok(alerts)) => (scales, alerts),
            (scales, alerts) => {
                return Ok(Overview::Partial {
                    residents,
                    scales,
                    alerts,
                });
            }
        };
        let snapshot = Snapshot {
            key: Key {
                commits: store_key.0,
                registry: store_key.1,
                book: book_key,
            },
            residents: Arc::new(residents),
            scales: Arc::new(scales),
            alerts: Arc::new(alerts),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
        Ok(Overview::Snapshot(snapshot))
    }
}
