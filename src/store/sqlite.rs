//! The embedded store: one SQLite file on disk (WAL), so a single instance
//! on a bare machine keeps every partner, click and cent across restarts.
//!
//! One writer connection and one reader connection, each behind a mutex and
//! used only from the blocking pool, never from the runtime's threads. WAL
//! lets the reader (catalog, ledger pages, the worker's taking of events)
//! run while the writer commits; the worker's other reads use the writer's
//! connection (`read_for_worker`), reports a third one from low-priority
//! threads (`read_for_report`). Records the service already
//! speaks in JSON (partners, campaigns, events, ledger entries) are stored
//! as JSON text; the records every book step rewrites (books, customers,
//! conversion cells) in a binary form (`record.rs`); what is queried by
//! range (clicks, counters, queues, history) has columns.
//!
//! - here: the store, its connections' handling and its migrations
//! - `file`: the file, its connections, expiry, backups
//! - `catalog`: partners and campaigns
//! - `clicks`: click batches, pending unique-visitor sketches
//! - `click_log`: click records packed by batch
//! - `counts`: report counters, added up once a second
//! - `queue`: the event queue and its dead letter
//! - `routing`: customers' claims and parked events
//! - `books`: partners' books, inboxes and ledgers
//! - `payouts`: payouts by status and partner
//! - `traffic`: bot and suspect tallies

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{NaiveDate, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;

mod books;
mod catalog;
mod click_log;
mod clicks;
mod counts;
mod coupons;
mod file;
mod holds;
mod payouts;
mod queue;
mod routing;
mod traffic;
mod webhooks;

use self::clicks::*;
pub use self::file::backup;
use self::file::*;

use self::counts::{Cell, CellMap, PendingCounts};
use super::record::{decode_record, encode_record};
use super::sketch::Sketch;
use super::{
    cell_of_key, partner_of_key, prelude::*, Campaign, CatalogSnapshot, Click, ClickCount, Commit,
    CounterCell, Delivery, Enqueued, Inbox, InboxItem, ParkedEvent, Partner, QueueStats, Route,
    StoreError, Taken, Unreadable, MAX_VISITOR_CLICKS, UNREADABLE_KEPT,
};
use crate::conversions::book::{
    Book, BookRequest, BookView, Changes, ConversionCell, History, HistoryChange, LedgerEntry,
    Payout,
};
use crate::conversions::customer::{ConversionCounts, Customer, Referral};
use crate::conversions::events::Event;
use crate::ids::PartnerId;
use crate::ids::{ClickId, CustomerId, VisitorId};

/// The schema this build writes. Each migration takes the database from
/// the version before it to its own (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
const MIGRATIONS: &[Migration] = &[
    Migration::sql(include_str!("sqlite/schema_1.sql")),
    Migration::sql(include_str!("sqlite/schema_2.sql")),
    Migration::sql(include_str!("sqlite/schema_3.sql")),
    Migration {
        sql: include_str!("sqlite/schema_4.sql"),
        then: Some(click_log::migrate_rows),
    },
    Migration::sql(include_str!("sqlite/schema_5.sql")),
    Migration::sql(include_str!("sqlite/schema_6.sql")),
    Migration::sql(include_str!("sqlite/schema_7.sql")),
    Migration::sql(include_str!("sqlite/schema_8.sql")),
    Migration::sql(include_str!("sqlite/schema_9.sql")),
    Migration::sql(include_str!("sqlite/schema_10.sql")),
    Migration::sql(include_str!("sqlite/schema_11.sql")),
    Migration::sql(include_str!("sqlite/schema_12.sql")),
    Migration::sql(include_str!("sqlite/schema_13.sql")),
    Migration::sql(include_str!("sqlite/schema_14.sql")),
];

/// One schema step: its SQL, then, for a step that moves rows into a form
/// SQL cannot write, a function run in the same transaction.
struct Migration {
    sql: &'static str,
    then: Option<fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>>,
}

impl Migration {
    const fn sql(sql: &'static str) -> Self {
        Migration { sql, then: None }
    }
}

/// Keys looked at per transaction when expiring, so the flusher's batches
/// get the writer in between.
const EXPIRE_AT_ONCE: usize = 2_000;
/// Keys of each click table looked at per minute: a table of 3,000,000
/// visitors is walked about every two hours.
const EXPIRE_PER_MINUTE: usize = 30_000;

/// Why the database could not be opened: each names `embedded.path`.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("`embedded.path` {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    #[error("`embedded.path` {path}: written by a newer lastclick (schema {found}; this build knows up to {SCHEMA_VERSION}); run that version or restore a backup")]
    Newer { path: PathBuf, found: i64 },
}

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// Reports' reads, on a connection of their own at the lowest CPU
    /// priority (`read_for_report`).
    report_reader: Arc<Mutex<Connection>>,
    window: Duration,
    /// Wakes a worker waiting for events (they are queued in-process).
    events_queued: Arc<Notify>,
    /// Where expiry stopped in `click_batches` and in `visitor_clicks` (a
    /// key).
    expiry_cursors: [Mutex<Vec<u8>>; 2],
    /// Unique-visitor sketches of recent batches, merged into the
    /// database every `VISITORS_EVERY` (and by `sync`); reads add them.
    visitors: Mutex<PendingVisitors>,
    /// Click counts of recent batches, added to `click_cells` every
    /// `counts::COUNTS_EVERY`; reads add them.
    counts: Mutex<PendingCounts>,
    /// One merge of pending counts at a time.
    merging_counts: tokio::sync::Mutex<()>,
    /// Locked books: holder and until when. In memory, since the database
    /// has one worker (the process that calls `take_over`), and a restart
    /// frees them all, as `take_over` did when they were rows.
    book_locks: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Events handed to the worker and not yet acknowledged, by sequence
    /// number, with when they were handed out. In memory for the same
    /// reason: taking events is then a read, not a write of every row.
    taken_events: Mutex<BTreeMap<i64, std::time::Instant>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        match e {
            E::FromSqlConversionFailure(..) | E::InvalidColumnType(..) | E::Utf8Error(..) => {
                StoreError::corrupt("sqlite row", e)
            }
            other => StoreError::unavailable(other),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) and migrates the database at
    /// `path`. Click records and counters are kept for `window`.
    pub fn open(path: &Path, window: Duration) -> Result<Self, OpenError> {
        let unusable = |reason: String| OpenError::Unusable {
            path: path.to_owned(),
            reason,
        };
        create_private(path).map_err(|e| unusable(e.to_string()))?;
        let mut writer = Connection::open(path).map_err(|e| unusable(e.to_string()))?;
        configure(&writer, false).map_err(|e| unusable(e.to_string()))?;
        let found: i64 = writer
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| unusable(e.to_string()))?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::Newer {
                path: path.to_owned(),
                found,
            });
        }
        migrate(&mut writer, found).map_err(|e| unusable(format!("migrating: {e}")))?;
        let reader = Connection::open(path).map_err(|e| unusable(e.to_string()))?;
        configure(&reader, true).map_err(|e| unusable(e.to_string()))?;
        let report_reader = Connection::open(path).map_err(|e| unusable(e.to_string()))?;
        configure(&report_reader, true).map_err(|e| unusable(e.to_string()))?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            report_reader: Arc::new(Mutex::new(report_reader)),
            window,
            events_queued: Arc::new(Notify::new()),
            expiry_cursors: Default::default(),
            visitors: Mutex::new(PendingVisitors {
                cells: CellMap::default(),
                bytes: 0,
                since: std::time::Instant::now(),
            }),
            counts: Mutex::new(PendingCounts::default()),
            merging_counts: tokio::sync::Mutex::new(()),
            book_locks: Mutex::new(HashMap::new()),
            taken_events: Mutex::new(BTreeMap::new()),
        })
    }

    /// Takes over from a `serve` that stopped without finishing (a SIGKILL,
    /// a power cut): the events it had taken and the books it had locked
    /// are free again at once, rather than after `worker.reclaim_after`.
    /// Only the process that runs the worker calls this: the database has
    /// one.
    ///
    /// It also adds up the click counts the predecessor's last batches left
    /// pending. Only here: another process opening the file (`ingest`,
    /// `serve --check`) must not merge rows whose counts the running
    /// `serve` holds in memory and merges itself.
    pub fn take_over(&self) -> Result<(), StoreError> {
        relock(&self.taken_events).clear();
        relock(&self.book_locks).clear();
        let mut conn = relock(&self.writer);
        counts::recover(&mut conn)?;
        // Marks a database of the first schema may hold: events are no
        // longer marked in the database.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE event_queue SET taken_at = NULL WHERE taken_at IS NOT NULL",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The setting `name`, storing `make()` first if it has none: values
    /// generated at the first start (secrets, tokens) survive restarts.
    /// Answers the value and whether it was made now.
    pub fn setting_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> Result<(String, bool), StoreError> {
        let mut conn = relock(&self.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<String> = tx
            .query_row(
                "SELECT value FROM settings WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(value) = found {
            return Ok((value, false));
        }
        let value = make();
        tx.execute(
            "INSERT INTO settings (name, value) VALUES (?1, ?2)",
            params![name, value],
        )?;
        tx.commit()?;
        Ok((value, true))
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        on_blocking_pool(Arc::clone(&self.writer), f).await
    }

    /// A write whose loss in a power cut only undoes progress that is
    /// made again: the worker's routing and bookkeeping steps (the events
    /// they work on were committed, synced, when accepted) and click
    /// batches. WAL keeps commits in order, so a power cut loses a suffix
    /// of them, never one in the middle, and the next synced commit (an
    /// accepted event, a payout, a catalog change) syncs them all.
    async fn write_unsynced<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(move |conn| {
            conn.prepare_cached("PRAGMA synchronous = NORMAL")?
                .execute([])?;
            let done = f(conn);
            conn.prepare_cached("PRAGMA synchronous = FULL")?
                .execute([])?;
            done
        })
        .await
    }

    /// A read the worker follows with writes, on the writer's connection:
    /// its page cache stays warm, where the reader's is dropped (and its
    /// pages read again) whenever the writer has committed since its last
    /// read, as it nearly always has while the worker works (`perf` of the
    /// embedded worker: a tenth of its CPU).
    async fn read_for_worker<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write(f).await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        on_blocking_pool(Arc::clone(&self.reader), f).await
    }

    /// A report's read: on the report connection, on a low-priority
    /// thread, so that a report of any size takes no core from redirects
    /// and holds up no other read.
    async fn read_for_report<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.report_reader);
        crate::low_priority::run(move || f(&mut relock(&conn))).await
    }

    /// The oldest click time still kept.
    fn horizon(&self) -> i64 {
        Utc::now().timestamp() - self.window.as_secs() as i64
    }

    /// Drops click records, last clicks and counters older than the
    /// window, walking at most `rows` keys of each click table from where
    /// the last call stopped (a few thousand rows per transaction, so the
    /// flusher's batches get the writer in between). Reads never answer
    /// an expired click, so how soon a row goes is only a matter of space.
    pub async fn expire(&self, now_unix: i64, rows: usize) -> Result<(), StoreError> {
        let horizon = now_unix - self.window.as_secs() as i64;
        // Counts still pending would bring an expired day's cells back.
        self.merge_counts().await?;
        for (table, cursor) in [
            (ExpiringTable::ClickBatches, &self.expiry_cursors[0]),
            (ExpiringTable::VisitorClicks, &self.expiry_cursors[1]),
        ] {
            let mut walked = 0;
            while walked < rows {
                let from = relock(cursor).clone();
                let (scanned, last) = self
                    .write(move |conn| expire_range(conn, table, &from, horizon))
                    .await?;
                walked += scanned.max(1);
                // At the end of the table, start again from its beginning.
                *relock(cursor) = last.unwrap_or_default();
                if scanned < EXPIRE_AT_ONCE {
                    break;
                }
            }
        }
        let oldest_day = chrono::DateTime::from_timestamp(horizon, 0)
            .unwrap_or_default()
            .date_naive()
            .to_string();
        self.write(move |conn| {
            conn.execute("DELETE FROM click_cells WHERE day < ?1", [&oldest_day])?;
            conn.execute("DELETE FROM cell_visitors WHERE day < ?1", [&oldest_day])?;
            conn.execute("DELETE FROM traffic_cells WHERE day < ?1", [&oldest_day])?;
            // A batch is sent again within seconds, never a day later.
            let old_batches = Utc::now().timestamp() - 86_400;
            conn.execute("DELETE FROM traffic_batches WHERE at < ?1", [old_batches])?;
            Ok(())
        })
        .await
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt("sqlite JSON record", e))
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }
}

/// Every row's first column, a JSON record.
fn json_rows<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let mut query = conn.prepare_cached(sql)?;
    let rows = query.query_map(params, |row| row.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(from_json(&row?)?);
    }
    Ok(out)
}

/// Runs [`SqliteStore::expire`] once a minute until the store is dropped.
pub fn spawn_expiry(store: Arc<SqliteStore>) {
    let weak = Arc::downgrade(&store);
    drop(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            if let Err(e) = store
                .expire(Utc::now().timestamp(), EXPIRE_PER_MINUTE)
                .await
            {
                tracing::warn!(error = %e, "expiring old clicks failed; retrying in a minute");
            }
        }
    });
}

#[cfg(test)]
mod tests;
