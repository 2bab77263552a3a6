//! Requests that are not clicks (bots, link previews, suspects the
//! cookie-stuffing guard caught) are kept as counts, not dropped: the
//! report shows them beside each row's clicks, so a partner whose links
//! are mostly loaded by previews or iframes is visible. So are overwrites:
//! a counted click that took a visitor another partner's cookie credited,
//! tallied for both (won, lost), so a merchant sees who lives off others'
//! clicks. They are tallied
//! here, in memory, by report cell, and written to the store in one batch
//! every `clicks.flush_interval`, apart from the click queue: a flood of
//! them can never take a click's room in the buffer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{Store, TrafficBatch, TrafficCell};

/// Distinct cells tallied between two writes at most; past it a request
/// is not tallied (and is counted in `lastclick_traffic_dropped_total`).
const MAX_CELLS: usize = 100_000;

/// What a request that is not a click was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Bot,
    Suspect,
    /// A counted click that took over another partner's visitor.
    OverwriteWon,
    /// The partner whose visitor that click took.
    OverwriteLost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CellKey {
    partner: Arc<str>,
    /// Days since 1970-01-01, UTC.
    day: i64,
    campaign: Arc<str>,
    term: Option<Arc<str>>,
}

#[derive(Default)]
struct Tally {
    bots: AtomicU64,
    suspects: AtomicU64,
    won: AtomicU64,
    lost: AtomicU64,
}

/// The tallies since the last write.
pub struct TrafficCounts {
    /// Hashed with foldhash, seeded per process: an overwrite tallies two
    /// cells on the redirect's path, and SipHash of their three strings
    /// cost about as much as the rest of the tally.
    cells: DashMap<CellKey, Tally, RandomState>,
    pub metrics: Arc<Metrics>,
}

impl TrafficCounts {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        TrafficCounts {
            cells: DashMap::with_hasher(RandomState::default()),
            metrics,
        }
    }

    /// Tallies one request of `partner`'s `campaign` and `term` at `now`
    /// (unix seconds), sharing the route cache's strings.
    pub fn count(
        &self,
        partner: &Arc<str>,
        campaign: &Arc<str>,
        term: Option<&str>,
        now: i64,
        traffic: Traffic,
    ) {
        let key = CellKey {
            partner: Arc::clone(partner),
            day: now.div_euclid(86_400),
            campaign: Arc::clone(campaign),
            term: term.map(Arc::from),
        };
        self.add(key, traffic);
    }

    /// Tallies the losing side of an overwrite: names read from its cookie.
    pub fn count_lost(&self, partner: &str, campaign: &str, term: Option<&str>, now: i64) {
        let key = CellKey {
            partner: Arc::from(partner),
            day: now.div_euclid(86_400),
            campaign: Arc::from(campaign),
            term: term.map(Arc::from),
        };
        self.add(key, Traffic::OverwriteLost);
    }

    fn add(&self, key: CellKey, traffic: Traffic) {
        let tally = match self.cells.get(&key) {
            Some(tally) => tally,
            None if self.cells.len() >= MAX_CELLS => {
                self.metrics.traffic_dropped.inc();
                return;
            }
            None => self.cells.entry(key).or_default().downgrade(),
        };
        let counter = match traffic {
            Traffic::Bot => &tally.bots,
            Traffic::Suspect => &tally.suspects,
            Traffic::OverwriteWon => &tally.won,
            Traffic::OverwriteLost => &tally.lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes every tally, leaving none.
    fn take(&self) -> Vec<TrafficCell> {
        let keys: Vec<CellKey> = self.cells.iter().map(|e| e.key().clone()).collect();
        let mut cells = Vec::with_capacity(keys.len());
        for key in keys {
            let Some((key, tally)) = self.cells.remove(&key) else {
                continue;
            };
            let day =
                NaiveDate::from_num_days_from_ce_opt(719_163 + key.day as i32).unwrap_or_default();
            cells.push(TrafficCell {
                partner: key.partner.to_string(),
                day,
                campaign: key.campaign.to_string(),
                term: key.term.as_deref().unwrap_or("").to_owned(),
                bots: tally.bots.into_inner(),
                suspects: tally.suspects.into_inner(),
                overwrites_won: tally.won.into_inner(),
                overwrites_lost: tally.lost.into_inner(),
            });
        }
        cells
    }
}

/// Writes the tallies every `interval` until `shutdown` fires, then once
/// more. A batch the store did not take is sent again, whole and under the
/// same id, so that it counts once.
pub async fn run_writer(
    counts: Arc<TrafficCounts>,
    store: Arc<dyn Store>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    let mut unsent: Option<TrafficBatch> = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let batch = unsent
            .take()
            .unwrap_or_else(|| TrafficBatch::new(counts.take()));
        if !batch.cells.is_empty() {
            if let Err(e) = store.add_traffic(&batch).await {
                counts.metrics.count_store_error("add_traffic");
                tracing::warn!(error = %e, "writing bot and suspect counts failed; retrying");
                unsent = Some(batch);
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tallied_by_cell_and_taken_once() {
        let counts = TrafficCounts::new(Arc::new(Metrics::new()));
        let (acme, spring): (Arc<str>, Arc<str>) = ("acme".into(), "spring".into());
        let day = 1_795_000_000;
        counts.count(&acme, &spring, Some("mail"), day, Traffic::Bot);
        counts.count(&acme, &spring, Some("mail"), day + 1, Traffic::Bot);
        counts.count(&acme, &spring, Some("mail"), day, Traffic::Suspect);
        counts.count(&acme, &spring, None, day, Traffic::Suspect);
        counts.count_lost("acme", "spring", None, day);
        let mut cells = counts.take();
        cells.sort_by(|a, b| a.term.cmp(&b.term));
        assert_eq!(cells.len(), 2);
        assert_eq!(
            (cells[0].term.as_str(), cells[0].bots, cells[0].suspects),
            ("", 0, 1)
        );
        assert_eq!(
            (cells[1].term.as_str(), cells[1].bots, cells[1].suspects),
            ("mail", 2, 1)
        );
        assert_eq!((cells[0].overwrites_won, cells[0].overwrites_lost), (0, 1));
        assert_eq!(cells[1].day.to_string(), "2026-11-18");
        assert!(counts.take().is_empty(), "taken once");
    }
}
