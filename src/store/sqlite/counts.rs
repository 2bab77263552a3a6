//! Click counters written once a second, not once a batch: each batch
//! stores its counts as one row of `pending_counts` (so a crash loses
//! none), and the flusher adds them to `click_cells` every `COUNTS_EVERY`.
//!
//! Why: a batch spread over thousands of report cells (`utm_term`s) made
//! one upsert per cell, each on a page of its own, nearly one a click; now
//! a cell is written once a second however many batches touched it.
//!
//! Exactly once: a merge adds a generation of batches to `click_cells`,
//! records the last batch it took (`counts_merged_upto` in `settings`) and
//! deletes those rows, in one transaction. Reports read the cells and that
//! mark in one read transaction, and add the generations in memory that
//! the mark does not cover.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};
use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::StoreError;

/// A report cell: partner, UTC day, campaign, term. Keyed by the clicks'
/// own `Arc`s, so counting a click allocates nothing.
pub(super) type Cell = (Arc<str>, NaiveDate, Arc<str>, Option<Arc<str>>);

/// Maps keyed by report cells: foldhash, seeded at random per process, so
/// colliding `utm_term`s cannot be computed in advance (foldhash calls
/// itself minimally DoS-resistant: weaker than SipHash against someone
/// who studies the running process). Every such map is bounded: a batch,
/// `COUNTS_PENDING_MAX_CELLS`, the sketches' memory. std's SipHash took
/// 4 % of `serve`'s CPU under `loadtest/run`, hashing each click's cell
/// twice.
pub(super) type CellMap<V> = HashMap<Cell, V, foldhash::fast::RandomState>;

/// How often pending counts are added to `click_cells`.
pub(super) const COUNTS_EVERY: Duration = Duration::from_secs(1);
/// Cells pending in memory that trigger a merge at once: a bound on the
/// memory they hold whatever the traffic (about 100 bytes a cell).
pub(super) const COUNTS_PENDING_MAX_CELLS: usize = 100_000;

/// A partner's count of one cell: day, campaign, term ("" for none), clicks.
pub(super) type PartnerCount = (NaiveDate, String, String, u64);

/// The name of the setting that marks the last batch merged.
const MERGED_UPTO: &str = "counts_merged_upto";

/// Batches' counts by cell, from the `pending_counts` row after the
/// previous generation's up to `upto`.
#[derive(Debug, Default)]
pub(super) struct Generation {
    pub upto: i64,
    pub counts: CellMap<u64>,
    /// Taken by a merge: later batches start a new generation.
    pub sealed: bool,
}

/// The counts not yet in `click_cells`, oldest generation first.
#[derive(Debug)]
pub(super) struct PendingCounts {
    pub generations: VecDeque<Generation>,
    /// When the last merge began.
    pub since: Instant,
}

impl Default for PendingCounts {
    fn default() -> Self {
        PendingCounts {
            generations: VecDeque::new(),
            since: Instant::now(),
        }
    }
}

impl PendingCounts {
    /// Adds a batch's counts, stored as `pending_counts` row `seq`.
    pub fn add<'a>(&mut self, seq: i64, counts: impl IntoIterator<Item = (&'a Cell, u64)>) {
        if self.generations.back().is_none_or(|g| g.sealed) {
            self.generations.push_back(Generation::default());
        }
        let open = self.generations.back_mut().expect("just made");
        open.upto = seq;
        for (cell, n) in counts {
            match open.counts.get_mut(cell) {
                Some(sum) => *sum += n,
                None => {
                    open.counts.insert(cell.clone(), n);
                }
            }
        }
    }

    pub fn cells(&self) -> usize {
        self.generations.iter().map(|g| g.counts.len()).sum()
    }

    /// Seals the open generation for a merge; answers what to merge (every
    /// generation not merged yet) and up to which row.
    pub fn seal(&mut self) -> Option<(i64, Vec<(Cell, u64)>)> {
        self.since = Instant::now();
        let last = self.generations.back_mut()?;
        last.sealed = true;
        let upto = last.upto;
        let mut all: CellMap<u64> = CellMap::default();
        for generation in &self.generations {
            for (cell, n) in &generation.counts {
                *all.entry(cell.clone()).or_default() += n;
            }
        }
        Some((upto, all.into_iter().collect()))
    }

    /// Forgets the generations a merge up to `upto` wrote.
    pub fn merged(&mut self, upto: i64) {
        while self.generations.front().is_some_and(|g| g.upto <= upto) {
            self.generations.pop_front();
        }
    }

    /// A partner's pending counts by generation: what a report adds to the
    /// cells it read, for the generations beyond their merge mark.
    pub fn of_partner(&self, partner: &str) -> Vec<(i64, Vec<PartnerCount>)> {
        self.generations
            .iter()
            .map(|g| {
                let counts = g
                    .counts
                    .iter()
                    .filter(|((of, ..), _)| **of == *partner)
                    .map(|((_, day, campaign, term), n)| {
                        let term = term.as_deref().unwrap_or("").to_owned();
                        (*day, campaign.to_string(), term, *n)
                    })
                    .collect();
                (g.upto, counts)
            })
            .collect()
    }
}

/// Stores a batch's counts as a `pending_counts` row; answers its number.
pub(super) fn store_batch<'a>(
    tx: &rusqlite::Transaction<'_>,
    counts: impl IntoIterator<Item = (&'a Cell, u64)>,
) -> Result<i64, StoreError> {
    // The number after the last row and the last merged (schema_3.sql):
    // two lookups on pages the cache holds.
    tx.prepare_cached(
        "INSERT INTO pending_counts (seq, counts) VALUES (\
         max(coalesce((SELECT max(seq) FROM pending_counts), 0), \
             (SELECT CAST(value AS INTEGER) FROM settings WHERE name = ?2)) + 1, \
         ?1)",
    )?
    .execute(params![encode(counts), MERGED_UPTO])?;
    Ok(tx.last_insert_rowid())
}

/// Adds `counts` to `click_cells` and marks every row up to `upto` merged,
/// in one transaction.
pub(super) fn merge(
    conn: &mut Connection,
    upto: i64,
    counts: &[(Cell, u64)],
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut add = tx.prepare_cached(
            "INSERT INTO click_cells (partner, day, campaign, term, clicks) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT DO UPDATE SET clicks = clicks + excluded.clicks",
        )?;
        for ((partner, day, campaign, term), n) in counts {
            let term = term.as_deref().unwrap_or("");
            add.execute(params![&**partner, day.to_string(), &**campaign, term, n])?;
        }
    }
    mark_merged(&tx, upto)?;
    tx.commit()?;
    Ok(())
}

fn mark_merged(tx: &rusqlite::Transaction<'_>, upto: i64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE settings SET value = ?2 WHERE name = ?1")?
        .execute(params![MERGED_UPTO, upto.to_string()])?;
    tx.prepare_cached("DELETE FROM pending_counts WHERE seq <= ?1")?
        .execute([upto])?;
    Ok(())
}

/// The last row merged, read inside the caller's transaction.
pub(super) fn merged_upto(conn: &Connection) -> Result<i64, StoreError> {
    let value: String = conn
        .prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([MERGED_UPTO], |row| row.get(0))?;
    value
        .parse()
        .map_err(|_| StoreError::corrupt(format!("settings.{MERGED_UPTO}"), format!("`{value}`")))
}

/// Merges whatever a stopped process left pending (its batches were
/// committed, its memory is gone): at startup, before anything reads.
pub(super) fn recover(conn: &mut Connection) -> Result<(), StoreError> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT seq, counts FROM pending_counts ORDER BY seq")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let Some(upto) = rows.last().map(|(seq, _)| *seq) else {
        return Ok(());
    };
    let mut all: CellMap<u64> = CellMap::default();
    for (seq, bytes) in &rows {
        let counts = decode(bytes).ok_or_else(|| {
            StoreError::corrupt(format!("pending_counts {seq}"), "cannot be read")
        })?;
        for (cell, n) in counts {
            *all.entry(cell).or_default() += n;
        }
    }
    merge(conn, upto, &all.into_iter().collect::<Vec<_>>())
}

/// A batch's counts as bytes: for each cell, its partner, campaign and
/// term (length-prefixed UTF-8), its day (days from the common era) and
/// its count.
fn encode<'a>(counts: impl IntoIterator<Item = (&'a Cell, u64)>) -> Vec<u8> {
    let mut out = Vec::new();
    for ((partner, day, campaign, term), n) in counts {
        for text in [&**partner, &**campaign, term.as_deref().unwrap_or("")] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&day.num_days_from_ce().to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<Vec<(Cell, u64)>> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn text(bytes: &mut &[u8]) -> Option<Arc<str>> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
        Some(std::str::from_utf8(take(bytes, len)?).ok()?.into())
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (partner, campaign, term) = (text(&mut bytes)?, text(&mut bytes)?, text(&mut bytes)?);
        let day = i32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let day = NaiveDate::from_num_days_from_ce_opt(day)?;
        let n = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().ok()?);
        let term = (!term.is_empty()).then_some(term);
        out.push(((partner, day, campaign, term), n));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(partner: &str, day: u32, term: Option<&str>) -> Cell {
        (
            partner.into(),
            NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
            "spring".into(),
            term.map(Into::into),
        )
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let counts: HashMap<Cell, u64> = [
            (cell("acme", 1, None), 3),
            (cell("acme", 2, Some("ünïcode")), 1),
            (cell("beta", 2, Some("t1")), u64::MAX),
        ]
        .into();
        let mut back: Vec<(Cell, u64)> =
            decode(&encode(counts.iter().map(|(c, n)| (c, *n)))).unwrap();
        back.sort();
        let mut want: Vec<(Cell, u64)> = counts.into_iter().collect();
        want.sort();
        assert_eq!(back, want);
        assert!(decode(&encode([])).unwrap().is_empty());
        assert!(decode(&[1, 0, 0]).is_none(), "a cut row is refused");
    }

    #[test]
    fn a_merge_takes_every_generation_so_far_and_forgets_them_once_written() {
        let mut pending = PendingCounts::default();
        pending.add(1, [(&cell("acme", 1, None), 2)]);
        pending.add(2, [(&cell("acme", 1, None), 1)]);
        let (upto, counts) = pending.seal().unwrap();
        assert_eq!((upto, counts), (2, vec![(cell("acme", 1, None), 3)]));
        // A batch written while the merge runs starts a new generation.
        pending.add(3, [(&cell("acme", 1, None), 5)]);
        assert_eq!(pending.generations.len(), 2);
        pending.merged(2);
        let left = pending.of_partner("acme");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, 3);
        assert_eq!(left[0].1[0].3, 5);
        assert!(pending.of_partner("beta")[0].1.is_empty());
    }

    /// Batch numbers only grow: after rows merged and deleted, and in a
    /// database migrated from schema 2 (where AUTOINCREMENT numbered them).
    #[test]
    fn batch_numbers_never_come_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        for step in &super::super::MIGRATIONS[..2] {
            conn.execute_batch(step.sql).unwrap();
        }
        // Schema 2 rows: 7 merged and deleted, 8 and 9 pending.
        conn.execute_batch(
            "INSERT INTO pending_counts (seq, counts) VALUES (7, x''), (8, x''), (9, x''); \
             DELETE FROM pending_counts WHERE seq <= 7; \
             UPDATE settings SET value = '7' WHERE name = 'counts_merged_upto';",
        )
        .unwrap();
        conn.execute_batch(super::super::MIGRATIONS[2].sql).unwrap();
        let batch = |conn: &mut Connection| {
            let tx = conn.transaction().unwrap();
            let seq = store_batch(&tx, [(&cell("acme", 1, None), 1)]).unwrap();
            tx.commit().unwrap();
            seq
        };
        assert_eq!(batch(&mut conn), 10, "after the pending rows");
        merge(&mut conn, 10, &[]).unwrap();
        assert_eq!(batch(&mut conn), 11, "after the merged, all rows deleted");
        merge(&mut conn, 11, &[]).unwrap();
        conn.execute(
            "UPDATE settings SET value = '40' WHERE name = ?1",
            [MERGED_UPTO],
        )
        .unwrap();
        assert_eq!(batch(&mut conn), 41, "after the merge mark");
    }
}
