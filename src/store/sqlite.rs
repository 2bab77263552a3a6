//! The embedded store: one SQLite file on disk (WAL), so a single instance
//! on a bare machine keeps every partner, click and cent across restarts.
//!
//! One writer connection and one reader connection, each behind a mutex and
//! used only from the blocking pool, never from the runtime's threads. WAL
//! lets the reader (catalog, reports, ledger pages, the worker's taking of
//! events) run while the writer commits; the worker's other reads use the
//! writer's connection (`read_for_worker`). Records the service already
//! speaks in JSON (partners, campaigns, events, ledger entries) are stored
//! as JSON text; the records every book step rewrites (books, customers,
//! conversion cells) in a binary form (`record.rs`); what is queried by
//! range (clicks, counters, queues, history) has columns.
//!
//! - `file`: the file, its connections, migrations, expiry, backups
//! - `clicks`: click batches, pending unique-visitor sketches
//! - `click_log`: click records packed by batch
//! - `counts`: report counters, added up once a second
//! - here: the `Store` methods

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

mod click_log;
mod clicks;
mod counts;
mod file;

use self::clicks::*;
pub use self::file::backup;
use self::file::*;

use self::counts::{Cell, CellMap, PendingCounts};
use super::record::{decode_record, encode_record};
use super::sketch::Sketch;
use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, Commit, CounterCell, Delivery, Enqueued,
    InboxItem, ParkedEvent, Partner, QueueStats, Route, Store, StoreError, Taken, Unreadable,
    UNREADABLE_KEPT,
};
use crate::conversions::book::{
    parse_conversion_cell, Book, BookRequest, BookView, Changes, History, HistoryChange,
    LedgerEntry,
};
use crate::conversions::customer::{ConversionCounts, Customer, Referral};
use crate::conversions::events::Event;
use crate::ids::PartnerId;
use crate::ids::{ClickId, VisitorId};

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
    window: Duration,
    /// Wakes a worker waiting for events (they are queued in-process).
    events_queued: Arc<Notify>,
    /// Where expiry stopped in `click_batches` and in `last_clicks` (a key).
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
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
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
            (ExpiringTable::LastClicks, &self.expiry_cursors[1]),
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

/// One catalog change and the catalog version's rise, in one synced
/// transaction; `unchanged` is the error when the statement touched no row
/// (an insert that found the key taken, an update that found none).
fn change_catalog(
    conn: &mut Connection,
    sql: &str,
    row: [String; 3],
    unchanged: StoreError,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if tx.execute(sql, row)? == 0 {
        return Err(unchanged);
    }
    tx.execute(
        "UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE name = 'catalog_version'",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn catalog_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let version: i64 = conn.query_row(
                "SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'catalog_version'",
                [],
                |row| row.get(0),
            )?;
            Ok(version as u64)
        })
        .await
    }

    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let version: i64 = tx.query_row(
                "SELECT CAST(value AS INTEGER) FROM settings WHERE name = 'catalog_version'",
                [],
                |row| row.get(0),
            )?;
            let partners = json_rows(&tx, "SELECT record FROM partners ORDER BY id", [])?;
            let campaigns = json_rows(
                &tx,
                "SELECT record FROM campaigns ORDER BY partner, slug",
                [],
            )?;
            Ok(CatalogSnapshot {
                version: version as u64,
                partners,
                campaigns,
            })
        })
        .await
    }

    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let row = [
            partner.id.as_str().to_owned(),
            partner.token_hash.clone(),
            to_json(partner),
        ];
        self.write(move |conn| {
            change_catalog(
                conn,
                "INSERT OR IGNORE INTO partners (id, token_hash, record) VALUES (?1, ?2, ?3)",
                row,
                StoreError::Conflict,
            )
        })
        .await
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let row = [
            partner.id.as_str().to_owned(),
            partner.token_hash.clone(),
            to_json(partner),
        ];
        self.write(move |conn| {
            change_catalog(
                conn,
                "UPDATE partners SET token_hash = ?2, record = ?3 WHERE id = ?1",
                row,
                StoreError::NotFound,
            )
        })
        .await
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |conn| {
            let mut found = json_rows(conn, "SELECT record FROM partners WHERE id = ?1", [id])?;
            Ok(found.pop())
        })
        .await
    }

    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |conn| {
            let mut found: Vec<Partner> = json_rows(
                conn,
                "SELECT record FROM partners WHERE token_hash = ?1",
                [hash],
            )?;
            Ok(found.pop().map(|p| p.id))
        })
        .await
    }

    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let row = [
            campaign.partner.as_str().to_owned(),
            campaign.slug.as_str().to_owned(),
            to_json(campaign),
        ];
        self.write(move |conn| {
            change_catalog(
                conn,
                "INSERT OR IGNORE INTO campaigns (partner, slug, record) VALUES (?1, ?2, ?3)",
                row,
                StoreError::Conflict,
            )
        })
        .await
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        let partner = partner.as_str().to_owned();
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM campaigns WHERE partner = ?1 ORDER BY slug",
                [partner],
            )
        })
        .await
    }

    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError> {
        if clicks.is_empty() {
            return Ok(());
        }
        let owned = clicks.to_vec();
        // A batch is at risk only until the next synced commit: the
        // documented cost of a power loss is the last flush interval of
        // clicks, and a batch then costs one write, not a sync.
        let batch = self
            .write_unsynced(move |conn| write_clicks(conn, &owned))
            .await?;
        let counts_due = {
            let mut pending = relock(&self.counts);
            pending.add(batch.seq, fresh_counts(&batch.cells));
            pending.cells() >= counts::COUNTS_PENDING_MAX_CELLS
                || pending.since.elapsed() >= counts::COUNTS_EVERY
        };
        if counts_due {
            self.merge_counts().await?;
        }
        let visitors_due = {
            let mut pending = relock(&self.visitors);
            for (cell, clicks) in batch.cells {
                pending.add(cell, &clicks.visitors);
            }
            pending.bytes >= VISITORS_PENDING_MAX_BYTES || pending.since.elapsed() >= VISITORS_EVERY
        };
        if visitors_due {
            self.merge_visitors().await?;
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.merge_counts().await?;
        self.merge_visitors().await
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        let (id, horizon) = (id.0, self.horizon());
        self.read(move |conn| {
            let click = click_log::lookup(conn, &ClickId(id))?;
            Ok(click.filter(|c| c.at >= horizon))
        })
        .await
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        let (visitor, horizon) = (visitor.0, self.horizon());
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let last: Option<[u8; 16]> = tx
                .prepare_cached("SELECT click FROM last_clicks WHERE visitor = ?1 AND at >= ?2")?
                .query_row(params![visitor, horizon], |row| row.get(0))
                .optional()?;
            let Some(last) = last else { return Ok(None) };
            let click = click_log::lookup(&tx, &ClickId(last))?;
            Ok(click.filter(|c| c.at >= horizon))
        })
        .await
    }

    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError> {
        // Pending counts first, the cells and their merge mark after: a
        // generation merged meanwhile is then counted from the cells only.
        let pending = relock(&self.counts).of_partner(partner.as_str());
        let partner = partner.as_str().to_owned();
        let (merged_upto, stored) = self
            .read(move |conn| {
                let tx = conn.transaction()?;
                let merged_upto = counts::merged_upto(&tx)?;
                let mut query = tx.prepare_cached(
                    "SELECT day, campaign, term, clicks FROM click_cells \
                     WHERE partner = ?1 AND day >= ?2 AND day <= ?3",
                )?;
                let rows = query
                    .query_map(params![partner, from.to_string(), to.to_string()], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, u64>(3)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((merged_upto, rows))
            })
            .await?;
        let mut cells: BTreeMap<(NaiveDate, String, String), u64> = BTreeMap::new();
        for (day, campaign, term, clicks) in stored {
            let Ok(day) = day.parse::<NaiveDate>() else {
                continue;
            };
            *cells.entry((day, campaign, term)).or_default() += clicks;
        }
        for (upto, counts) in pending {
            if upto <= merged_upto {
                continue;
            }
            for (day, campaign, term, clicks) in counts {
                if (from..=to).contains(&day) {
                    *cells.entry((day, campaign, term)).or_default() += clicks;
                }
            }
        }
        Ok(cells
            .into_iter()
            .map(|((day, campaign, term), clicks)| ClickCount {
                cell: CounterCell {
                    day,
                    campaign,
                    term,
                },
                clicks,
            })
            .collect())
    }

    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError> {
        let wanted = cells.to_vec();
        let owner = partner.as_str().to_owned();
        let mut union = self
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT visitors FROM cell_visitors \
                     WHERE partner = ?1 AND day = ?2 AND campaign = ?3 AND term = ?4",
                )?;
                let mut union = Sketch::default();
                for cell in &wanted {
                    let key = params![owner, cell.day.to_string(), cell.campaign, cell.term];
                    let found: Option<Vec<u8>> =
                        query.query_row(key, |row| row.get(0)).optional()?;
                    if let Some(bytes) = found {
                        union.merge(&Sketch::from_bytes(&bytes));
                    }
                }
                Ok(union)
            })
            .await?;
        // What recent batches saw and is not merged yet.
        let asked: HashSet<(NaiveDate, &str, &str)> = cells
            .iter()
            .map(|c| (c.day, c.campaign.as_str(), c.term.as_str()))
            .collect();
        let pending = relock(&self.visitors);
        for ((of, day, campaign, term), sketch) in &pending.cells {
            let term = term.as_deref().unwrap_or("");
            if **of == *partner.as_str() && asked.contains(&(*day, &**campaign, term)) {
                union.merge(sketch);
            }
        }
        Ok(union.count())
    }

    async fn enqueue_events(&self, events: &[Event]) -> Result<Enqueued, StoreError> {
        let events = events.to_vec();
        let enqueued = self
            .write(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut enqueued = Enqueued::default();
                {
                    let mut seen =
                        tx.prepare_cached("INSERT OR IGNORE INTO event_ids (id) VALUES (?1)")?;
                    let mut queue = tx.prepare_cached(
                        "INSERT INTO event_queue (event, queued_at) VALUES (?1, ?2)",
                    )?;
                    let now = now_ms();
                    for event in &events {
                        if seen.execute([event.id.as_str()])? == 1 {
                            queue.execute(params![to_json(event), now])?;
                            enqueued.accepted += 1;
                        } else {
                            enqueued.duplicates += 1;
                        }
                    }
                }
                tx.commit()?;
                Ok(enqueued)
            })
            .await?;
        self.events_queued.notify_waiters();
        Ok(enqueued)
    }

    async fn next_events(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> Result<Taken, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let queued = self.events_queued.notified();
            let rows = self.take_events(max, reclaim_after).await?;
            if !rows.is_empty() {
                // Decoded here, with the writer free for others.
                let mut taken = Taken::default();
                for (seq, event, queued_at_ms) in rows {
                    match serde_json::from_str(&event) {
                        Ok(event) => taken.events.push(Delivery {
                            delivery: seq.to_string(),
                            event,
                            queued_at_ms,
                        }),
                        Err(e) => taken.unreadable.push(Unreadable::new(
                            seq.to_string(),
                            &event,
                            e.to_string(),
                        )),
                    }
                }
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, queued).await.is_err() {
                return Ok(Taken::default());
            }
        }
    }

    async fn dead_letter(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        let seqs: Vec<i64> = entries
            .iter()
            .filter_map(|e| e.delivery.parse().ok())
            .collect();
        let queued = seqs.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for entry in &entries {
                tx.prepare_cached(
                    "INSERT INTO unreadable_events (delivery, raw, reason, at_ms) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    entry.delivery,
                    entry.raw,
                    entry.reason,
                    now_ms
                ])?;
            }
            for seq in &queued {
                tx.prepare_cached("DELETE FROM event_queue WHERE seq = ?1")?
                    .execute([seq])?;
            }
            tx.execute(
                "DELETE FROM unreadable_events WHERE seq <= \
                 (SELECT MAX(seq) FROM unreadable_events) - ?1",
                [UNREADABLE_KEPT as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        let mut taken = relock(&self.taken_events);
        for seq in &seqs {
            taken.remove(seq);
        }
        Ok(())
    }

    async fn unreadable_events(&self, limit: usize) -> Result<Vec<Unreadable>, StoreError> {
        self.read(move |conn| {
            let mut rows = conn.prepare_cached(
                "SELECT delivery, raw, reason, at_ms FROM unreadable_events ORDER BY seq LIMIT ?1",
            )?;
            let listed = rows
                .query_map([limit as i64], |row| {
                    Ok(Unreadable {
                        delivery: row.get(0)?,
                        raw: row.get(1)?,
                        reason: row.get(2)?,
                        at_ms: row.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(listed)
        })
        .await
    }

    async fn ack_events(&self, deliveries: &[String]) -> Result<(), StoreError> {
        let seqs: Vec<i64> = deliveries.iter().filter_map(|d| d.parse().ok()).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let acked = seqs.clone();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM event_queue WHERE seq = ?1")?;
                for seq in &seqs {
                    delete.execute([seq])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        let mut taken = relock(&self.taken_events);
        for seq in &acked {
            taken.remove(seq);
        }
        Ok(())
    }

    async fn event_queue_stats(&self) -> Result<QueueStats, StoreError> {
        let (queued, routed) = self
            .read(|conn| {
                // Counted on the (taken_at, seq) index, never the events' rows.
                let count = |sql: &str| conn.query_row(sql, [], |row| row.get::<_, i64>(0));
                let queued = count("SELECT COUNT(*) FROM event_queue WHERE taken_at IS NULL")?;
                let routed = count("SELECT COUNT(*) FROM inbox")?;
                Ok((queued as u64, routed as u64))
            })
            .await?;
        let pending = relock(&self.taken_events).len() as u64;
        Ok(QueueStats {
            waiting: queued.saturating_sub(pending),
            pending,
            routed,
        })
    }

    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError> {
        let event = event.clone();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(claim) = claim_of(&tx, event.customer.as_str())? {
                return Ok(Route::Claimed(claim));
            }
            tx.execute(
                "INSERT OR IGNORE INTO parked (customer, event_id, event, parked_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    event.customer.as_str(),
                    event.id.as_str(),
                    to_json(&event),
                    now_ms
                ],
            )?;
            tx.commit()?;
            Ok(Route::Parked)
        })
        .await
    }

    async fn claim_customer(
        &self,
        customer: &str,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError> {
        let customer = customer.to_owned();
        let referral = referral.map(to_json);
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT OR IGNORE INTO claims (customer, referral) VALUES (?1, ?2)",
                params![customer, referral],
            )?;
            let claim = claim_of(&tx, &customer)?.unwrap_or(None);
            let parked = json_rows(
                &tx,
                "SELECT event FROM parked WHERE customer = ?1 ORDER BY parked_at, event_id",
                [&customer],
            )?;
            tx.commit()?;
            Ok((claim, parked))
        })
        .await
    }

    async fn unpark(&self, customer: &str, parked: &[Event]) -> Result<(), StoreError> {
        if parked.is_empty() {
            return Ok(()); // nearly every signup: nothing waited for it
        }
        let customer = customer.to_owned();
        let ids: Vec<String> = parked.iter().map(|e| e.id.as_str().to_owned()).collect();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM parked WHERE customer = ?1 AND event_id = ?2")?;
                for id in &ids {
                    delete.execute(params![customer, id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A claimed customer's events are its claimant's, which forgets
            // them once they are in the partner's inbox.
            let expired = "SELECT customer FROM parked GROUP BY customer \
                 HAVING MIN(parked_at) < ?1 \
                 AND customer NOT IN (SELECT customer FROM claims)";
            tx.execute(
                &format!(
                    "INSERT INTO dead (event_id, event, parked_at) \
                     SELECT event_id, event, parked_at FROM parked \
                     WHERE customer IN ({expired}) ORDER BY parked_at, event_id"
                ),
                [before_ms],
            )?;
            let moved = tx.execute(
                &format!("DELETE FROM parked WHERE customer IN ({expired})"),
                [before_ms],
            )?;
            tx.commit()?;
            Ok(moved)
        })
        .await
    }

    async fn parked_events(
        &self,
        dead: bool,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let table = if dead { "dead" } else { "parked" };
        self.read(move |conn| {
            let mut query = conn.prepare(&format!(
                "SELECT event, parked_at FROM {table} ORDER BY parked_at, event_id LIMIT ?1"
            ))?;
            let rows = query.query_map([limit as i64], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (event, parked_at) = row?;
                events.push(ParkedEvent {
                    event: from_json(&event)?,
                    parked_at,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM parked", [], |row| row.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn load_book(
        &self,
        partner: &str,
        request: &BookRequest,
    ) -> Result<BookView, StoreError> {
        let partner = partner.to_owned();
        let request = request.clone();
        let history_from = request.history_from;
        let stored = self
            .read_for_worker(move |conn| read_book(conn, &partner, &request))
            .await?;
        // Decoded here, with the writer free for others.
        let (version, book) = match stored.book {
            Some((version, book)) => (version as u64, decode_record::<Book>(&book.0)?),
            None => (0, Book::default()),
        };
        let mut view = BookView {
            book,
            version,
            ..BookView::default()
        };
        for (id, record) in stored.customers {
            view.customers
                .insert(id, decode_record::<Customer>(&record.0)?);
        }
        for (key, counts) in stored.cells {
            view.cells
                .insert(key, decode_record::<ConversionCounts>(&counts.0)?);
        }
        if let Some(from) = history_from {
            view.history = Some(History::from_members(
                from,
                stored.history.iter().map(|(m, at)| (m.as_str(), *at)),
            ));
        }
        Ok(view)
    }

    async fn push_inbox(&self, partner: &str, items: &[InboxItem]) -> Result<(), StoreError> {
        let partner = partner.to_owned();
        let items: Vec<String> = items.iter().map(to_json).collect();
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut push =
                    tx.prepare_cached("INSERT INTO inbox (partner, item) VALUES (?1, ?2)")?;
                for item in &items {
                    push.execute(params![partner, item])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn ready_partners(&self, max: usize) -> Result<Vec<String>, StoreError> {
        self.read_for_worker(move |conn| {
            let mut query = conn
                .prepare_cached("SELECT DISTINCT partner FROM inbox ORDER BY partner LIMIT ?1")?;
            let partners = query
                .query_map([max as i64], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(partners)
        })
        .await
    }

    async fn read_inbox(&self, partner: &str, max: usize) -> Result<Vec<InboxItem>, StoreError> {
        let partner = partner.to_owned();
        let items: Vec<String> = self
            .read_for_worker(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT item FROM inbox WHERE partner = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = query.query_map(params![partner, max as i64], |row| row.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await?;
        items.iter().map(|item| from_json(item)).collect()
    }

    async fn settle_ready(&self, _partner: &str) -> Result<(), StoreError> {
        // Ready partners are read off the inbox itself: nothing to mark.
        Ok(())
    }

    async fn lock_book(
        &self,
        partner: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = std::time::Instant::now();
        let mut locks = relock(&self.book_locks);
        // Taken is taken, by another worker or by the same one.
        if locks.get(partner).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        locks.insert(partner.to_owned(), (holder.to_owned(), now + ttl));
        Ok(true)
    }

    async fn unlock_book(&self, partner: &str, holder: &str) -> Result<(), StoreError> {
        let mut locks = relock(&self.book_locks);
        if locks.get(partner).is_some_and(|(h, _)| h == holder) {
            locks.remove(partner);
        }
        Ok(())
    }

    async fn commit_book(
        &self,
        partner: &str,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError> {
        let rows = BookRows::of(partner, changes);
        let version_read = version;
        let commit = move |conn: &mut Connection| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: i64 = tx
                .prepare_cached("SELECT version FROM books WHERE partner = ?1")?
                .query_row([&rows.partner], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            if current as u64 != version_read {
                return Ok(Commit::Conflict);
            }
            rows.write(&tx, current + 1)?;
            tx.commit()?;
            Ok(Commit::Applied)
        };
        let inbox_taken = changes.inbox_taken;
        // A commit that applies queued events is not synced by itself: a
        // power cut can undo it only together with every later commit (the
        // WAL keeps them in order), and what it applied is then still in
        // the inbox (or, before that, in the synced event queue) and is
        // applied again, to the same figures. A commit asked for over the
        // API (a payout) is synced before it answers, and syncs all before
        // it with it.
        if inbox_taken > 0 {
            self.write_unsynced(commit).await
        } else {
            self.write(commit).await
        }
    }

    async fn conversion_counts(
        &self,
        partner: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, ConversionCounts)>, StoreError> {
        let partner = partner.to_owned();
        self.read(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT cell, counts FROM conversions WHERE partner = ?1 ORDER BY cell",
            )?;
            let rows = query.query_map([&partner], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, StoredRecord>(1)?))
            })?;
            let mut cells = Vec::new();
            for row in rows {
                let (cell, counts) = row?;
                if parse_conversion_cell(&cell).is_some_and(|(day, ..)| day >= from && day <= to) {
                    cells.push((cell, decode_record(&counts.0)?));
                }
            }
            Ok(cells)
        })
        .await
    }

    async fn ledger(
        &self,
        partner: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let partner = partner.to_owned();
        let before = before.map_or(i64::MAX, |b| b as i64);
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT entry FROM ledger WHERE partner = ?1 AND seq < ?2 \
                 ORDER BY seq DESC LIMIT ?3",
                params![partner, before, limit as i64],
            )
        })
        .await
    }
}

/// The claim on `customer`, if claimed: `Some(None)` for a customer that
/// signed up without a valid click.
fn claim_of(conn: &Connection, customer: &str) -> Result<Option<Option<Referral>>, StoreError> {
    let found: Option<Option<String>> = conn
        .query_row(
            "SELECT referral FROM claims WHERE customer = ?1",
            [customer],
            |row| row.get(0),
        )
        .optional()?;
    match found {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(json)) => Ok(Some(Some(from_json(&json)?))),
    }
}

/// An event row as taken: sequence number, JSON, queue time (ms).
type QueuedRow = (i64, String, i64);

/// Reads up to `max` queued events: those named in `reclaim` first (taken
/// long ago and never acknowledged; gone if acknowledged since), then the
/// oldest not in `taken`.
fn read_events(
    conn: &Connection,
    max: usize,
    reclaim: &[i64],
    taken: &HashSet<i64>,
) -> Result<Vec<QueuedRow>, StoreError> {
    let row = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?, row.get(2)?));
    let mut out = Vec::with_capacity(max);
    let mut by_seq =
        conn.prepare_cached("SELECT seq, event, queued_at FROM event_queue WHERE seq = ?1")?;
    for seq in reclaim {
        out.extend(by_seq.query_row([seq], row).optional()?);
    }
    // In sequence order on the (taken_at, seq) index: the events still
    // being worked on come first, and are stepped over.
    let mut fresh = conn.prepare_cached(
        "SELECT seq, event, queued_at FROM event_queue WHERE taken_at IS NULL ORDER BY seq",
    )?;
    let mut rows = fresh.query([])?;
    while out.len() < max {
        let Some(next) = rows.next()? else { break };
        let seq: i64 = next.get(0)?;
        if !taken.contains(&seq) {
            out.push(row(next)?);
        }
    }
    Ok(out)
}

impl SqliteStore {
    /// Adds every pending click count to `click_cells` (see `counts`).
    async fn merge_counts(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.merging_counts.lock().await;
        let Some((upto, cells)) = relock(&self.counts).seal() else {
            return Ok(());
        };
        // Unsynced: the merge and the deletion of the rows it merged commit
        // together, and a power cut undoes both or neither.
        self.write_unsynced(move |conn| counts::merge(conn, upto, &cells))
            .await?;
        relock(&self.counts).merged(upto);
        Ok(())
    }

    /// Merges pending unique-visitor sketches into the stored ones.
    async fn merge_visitors(&self) -> Result<(), StoreError> {
        let cells: Vec<(Cell, Sketch)> = {
            let mut pending = relock(&self.visitors);
            pending.since = std::time::Instant::now();
            pending.bytes = 0;
            pending.cells.drain().collect()
        };
        if cells.is_empty() {
            return Ok(());
        }
        // Merging is idempotent (a register's maximum): what a failed write
        // did not merge goes back to wait for the next one.
        let retry = cells.clone();
        let merged = self.write(move |conn| merge_visitors(conn, cells)).await;
        if merged.is_err() {
            let mut pending = relock(&self.visitors);
            for (cell, sketch) in retry {
                pending.merge(cell, &sketch);
            }
        }
        merged
    }

    /// Hands out up to `max` events: those left unacknowledged for
    /// `reclaim_after` first, then new ones. A read, on the reader's
    /// connection: what is taken is kept in memory.
    async fn take_events(
        &self,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<Vec<QueuedRow>, StoreError> {
        let now = std::time::Instant::now();
        let (reclaim, taken): (Vec<i64>, HashSet<i64>) = {
            let taken = relock(&self.taken_events);
            let reclaim = taken
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= reclaim_after)
                .map(|(seq, _)| *seq)
                .take(max)
                .collect();
            (reclaim, taken.keys().copied().collect())
        };
        let rows = self
            .read(move |conn| read_events(conn, max, &reclaim, &taken))
            .await?;
        let mut taken = relock(&self.taken_events);
        for (seq, ..) in &rows {
            taken.insert(*seq, now);
        }
        Ok(rows)
    }
}

/// A record's bytes as stored: a BLOB, or JSON TEXT written by an earlier
/// version (`decode_record` tells them apart).
struct StoredRecord(Vec<u8>);

impl FromSql for StoredRecord {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Ok(StoredRecord(bytes.to_vec())),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// A partner's book rows as stored, decoded off the writer.
struct StoredBook {
    /// Version and book.
    book: Option<(i64, StoredRecord)>,
    customers: Vec<(String, StoredRecord)>,
    cells: Vec<(String, StoredRecord)>,
    /// Members and their times, when the request asks for the history.
    history: Vec<(String, i64)>,
}

/// Reads what `request` asks of a partner's book, in one read transaction
/// so that the version and the rows agree.
fn read_book(
    conn: &mut Connection,
    partner: &str,
    request: &BookRequest,
) -> Result<StoredBook, StoreError> {
    let tx = conn.transaction()?;
    let book = tx
        .prepare_cached("SELECT version, book FROM books WHERE partner = ?1")?
        .query_row([partner], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let mut stored = StoredBook {
        book,
        customers: records_of(
            &tx,
            "SELECT record FROM customers WHERE partner = ?1 AND id = ?2",
            partner,
            &request.customers,
        )?,
        cells: records_of(
            &tx,
            "SELECT counts FROM conversions WHERE partner = ?1 AND cell = ?2",
            partner,
            &request.cells,
        )?,
        history: Vec::new(),
    };
    if let Some(from) = request.history_from {
        let mut query =
            tx.prepare_cached("SELECT member, at FROM history WHERE partner = ?1 AND at >= ?2")?;
        stored.history = query
            .query_map(params![partner, from], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(stored)
}

/// The partner's record under each of `keys` that has one, by key: `sql`
/// selects it by partner (`?1`) and key (`?2`).
fn records_of<'k>(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    partner: &str,
    keys: impl IntoIterator<Item = &'k String>,
) -> Result<Vec<(String, StoredRecord)>, StoreError> {
    let mut query = tx.prepare_cached(sql)?;
    let mut found = Vec::new();
    for key in keys {
        let record: Option<StoredRecord> = query
            .query_row(params![partner, key], |row| row.get(0))
            .optional()?;
        found.extend(record.map(|record| (key.clone(), record)));
    }
    Ok(found)
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

/// A book step's changes as the rows it writes, encoded before the
/// writer's thread takes them.
struct BookRows {
    partner: String,
    book: Vec<u8>,
    customers: Vec<(String, Vec<u8>)>,
    cells: Vec<(String, Vec<u8>)>,
    history: Vec<HistoryChange>,
    entries: Vec<(u64, String)>,
    inbox_taken: usize,
}

impl BookRows {
    fn of(partner: &str, changes: &Changes) -> Self {
        BookRows {
            partner: partner.to_owned(),
            book: encode_record(&changes.book),
            customers: changes
                .customers
                .iter()
                .map(|c| (c.id.clone(), encode_record(c)))
                .collect(),
            cells: changes
                .cells
                .iter()
                .map(|(cell, counts)| (cell.clone(), encode_record(counts)))
                .collect(),
            history: changes.history.clone(),
            entries: changes
                .entries
                .iter()
                .map(|e| (e.seq, to_json(e)))
                .collect(),
            inbox_taken: changes.inbox_taken,
        }
    }

    /// Writes every row, the book at `version`, and takes the applied
    /// events off the inbox.
    fn write(&self, tx: &rusqlite::Transaction<'_>, version: i64) -> Result<(), StoreError> {
        let partner = &self.partner;
        tx.prepare_cached(
            "INSERT INTO books (partner, version, book) VALUES (?1, ?2, ?3) \
             ON CONFLICT (partner) DO UPDATE SET version = excluded.version, book = excluded.book",
        )?
        .execute(params![partner, version, self.book])?;
        let mut customer = tx.prepare_cached(
            "INSERT INTO customers (partner, id, record) VALUES (?1, ?2, ?3) \
             ON CONFLICT (partner, id) DO UPDATE SET record = excluded.record",
        )?;
        for (id, record) in &self.customers {
            customer.execute(params![partner, id, record])?;
        }
        let mut cell = tx.prepare_cached(
            "INSERT OR REPLACE INTO conversions (partner, cell, counts) VALUES (?1, ?2, ?3)",
        )?;
        for (key, counts) in &self.cells {
            cell.execute(params![partner, key, counts])?;
        }
        let mut add = tx.prepare_cached(
            "INSERT OR IGNORE INTO history (partner, at, member) VALUES (?1, ?2, ?3)",
        )?;
        let mut remove = tx
            .prepare_cached("DELETE FROM history WHERE partner = ?1 AND at = ?2 AND member = ?3")?;
        for change in &self.history {
            match change {
                HistoryChange::Add(member, at) => add.execute(params![partner, at, member]),
                HistoryChange::Remove(member, at) => remove.execute(params![partner, at, member]),
            }?;
        }
        let mut entry =
            tx.prepare_cached("INSERT INTO ledger (partner, seq, entry) VALUES (?1, ?2, ?3)")?;
        for (seq, json) in &self.entries {
            entry.execute(params![partner, seq, json])?;
        }
        if self.inbox_taken > 0 {
            tx.prepare_cached(
                "DELETE FROM inbox WHERE seq IN \
                 (SELECT seq FROM inbox WHERE partner = ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![partner, self.inbox_taken as i64])?;
        }
        Ok(())
    }
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
