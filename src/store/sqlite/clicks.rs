//! Click batches into SQLite: one transaction per batch (records, last
//! clicks, the batch's counts by cell), and the unique-visitor sketches
//! kept in memory until they are merged.

use super::*;

/// Unique-visitor sketches not yet merged into the database.
pub(super) struct PendingVisitors {
    pub(super) cells: CellMap<Sketch>,
    /// What `cells` holds, by `Sketch::memory`.
    pub(super) bytes: usize,
    pub(super) since: std::time::Instant,
}

/// What a pending cell holds besides its sketch's own memory: the map's
/// entry (the cell's key and the sketch) and its share of the table.
pub(super) const PENDING_CELL_BYTES: usize = 128;

impl PendingVisitors {
    /// Counts `visitors` in `cell`. Sketches are sets: a click written
    /// twice (a retried batch) adds nothing the second time.
    pub(super) fn add(&mut self, cell: Cell, visitors: &[VisitorId]) {
        self.update(cell, |sketch| visitors.iter().for_each(|v| sketch.add(v)));
    }

    pub(super) fn merge(&mut self, cell: Cell, other: &Sketch) {
        self.update(cell, |sketch| sketch.merge(other));
    }

    /// Changes a cell's pending sketch, keeping `bytes` up to date.
    pub(super) fn update(&mut self, cell: Cell, change: impl FnOnce(&mut Sketch)) {
        let entry = self.cells.entry(cell);
        if matches!(entry, std::collections::hash_map::Entry::Vacant(_)) {
            self.bytes += PENDING_CELL_BYTES;
        }
        let pending = entry.or_default();
        self.bytes -= pending.memory();
        change(pending);
        self.bytes += pending.memory();
    }
}

/// How often pending sketches are merged into the database. A merge
/// rewrites every sketch touched since the last (up to 16 KiB each, and
/// thousands of cells are active at once), so not often; reports add the
/// pending ones meanwhile.
pub(super) const VISITORS_EVERY: Duration = Duration::from_secs(30);
/// Memory held by pending sketches that triggers a merge at once, however
/// recent the last: a bound whatever the traffic, however many distinct
/// cells (`utm_term`s) it brings. (A bound by count of cells, 1,024,
/// merged several times a second under `loadtest/run`'s 3,000 cells,
/// though nearly all held a few hashes.)
pub(super) const VISITORS_PENDING_MAX_BYTES: usize = 16 << 20;

/// Last clicks per multi-row upsert: one statement for many rows saves
/// most of what a row costs beyond its B-tree insert.
pub(super) const ROWS_AT_ONCE: usize = 128;

/// `items` in chunks of `ROWS_AT_ONCE`, then of halving powers of two:
/// a multi-row statement is prepared once for each size and then found in
/// the statement cache, where a batch's remainder of any size would be
/// parsed anew for every batch.
pub(super) fn statement_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut size = ROWS_AT_ONCE;
    std::iter::from_fn(move || {
        while size > items.len() {
            size /= 2;
        }
        if size == 0 {
            return None;
        }
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// A multi-row statement: `head VALUES (..), (..) tail` for chunks of
/// `width` parameters a row, its text built once for each chunk size (the
/// statement cache finds statements by their text).
pub(super) struct MultiRow {
    pub(super) head: &'static str,
    pub(super) width: usize,
    pub(super) tail: &'static str,
    /// By `rows.trailing_zeros()`: chunks are powers of two.
    pub(super) texts: std::sync::OnceLock<Vec<String>>,
}

impl MultiRow {
    pub(super) const fn new(head: &'static str, width: usize, tail: &'static str) -> Self {
        MultiRow {
            head,
            width,
            tail,
            texts: std::sync::OnceLock::new(),
        }
    }

    /// The statement for `rows` rows, a power of two up to `ROWS_AT_ONCE`.
    pub(super) fn sql(&self, rows: usize) -> &str {
        let texts = self.texts.get_or_init(|| {
            let row = format!("({})", vec!["?"; self.width].join(", "));
            (0..=ROWS_AT_ONCE.trailing_zeros())
                .map(|shift| {
                    let rows = vec![row.as_str(); 1 << shift].join(", ");
                    format!("{} VALUES {rows}{}", self.head, self.tail)
                })
                .collect()
        });
        debug_assert!(rows.is_power_of_two() && rows <= ROWS_AT_ONCE);
        &texts[rows.trailing_zeros() as usize]
    }
}

/// What a batch leaves for later: its counts by cell, stored as
/// `pending_counts` row `seq`.
pub(super) struct BatchCells {
    pub(super) seq: i64,
    pub(super) cells: CellMap<CellClicks>,
}

/// A batch's clicks of one report cell: how many were new (counted), and
/// every click's visitor (a sketch is a set: a visitor seen again adds
/// nothing, and a click written before may not have reached the sketches).
#[derive(Default)]
pub(super) struct CellClicks {
    pub(super) fresh: u64,
    pub(super) visitors: Vec<VisitorId>,
}

/// Writes a batch in one transaction: click records, last clicks, and the
/// batch's counts by cell as one row (added to the counters later).
pub(super) fn write_clicks(
    conn: &mut Connection,
    clicks: &[Click],
) -> Result<BatchCells, StoreError> {
    let mut by_id: Vec<&Click> = clicks.iter().collect();
    by_id.sort_unstable_by_key(|c| c.click_id.0);
    // A click given twice in one batch is one click.
    by_id.dedup_by_key(|c| c.click_id);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // A batch stored before (retried after a timeout) adds nothing.
    let fresh = if click_log::append(&tx, &by_id)? {
        by_id
    } else {
        Vec::new()
    };
    finish_batch(tx, clicks, fresh)
}

/// The rest of a batch's transaction once its click records are in.
pub(super) fn finish_batch(
    tx: rusqlite::Transaction<'_>,
    all: &[Click],
    mut fresh: Vec<&Click>,
) -> Result<BatchCells, StoreError> {
    // In key order, so each multi-row insert walks the B-tree once.
    fresh.sort_unstable_by_key(|c| (c.visitor_id.0, c.at, c.click_id.0));
    insert_visitor_clicks(&tx, &fresh)?;
    let cells = by_cell(all, &fresh);
    let seq = counts::store_batch(&tx, fresh_counts(&cells))?;
    tx.commit()?;
    Ok(BatchCells { seq, cells })
}

pub(super) static INSERT_VISITOR_CLICKS: MultiRow = MultiRow::new(
    "INSERT OR IGNORE INTO visitor_clicks (visitor, at, click)",
    3,
    "",
);

/// Every new click in its visitor's clicks: the newest by (time, id) is
/// the visitor's last click, whatever order clicks arrive in, and the
/// latest `MAX_VISITOR_CLICKS` explain an attribution.
pub(super) fn insert_visitor_clicks(
    tx: &rusqlite::Transaction<'_>,
    clicks: &[&Click],
) -> Result<(), StoreError> {
    for chunk in statement_chunks(clicks) {
        let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 3);
        for click in chunk {
            values.extend([
                &click.visitor_id.0 as &dyn rusqlite::ToSql,
                &click.at,
                &click.click_id.0,
            ]);
        }
        tx.prepare_cached(INSERT_VISITOR_CLICKS.sql(chunk.len()))?
            .execute(values.as_slice())?;
    }
    Ok(())
}

/// A click's report cell.
pub(super) fn cell_of(click: &Click) -> Cell {
    (
        Arc::clone(&click.partner),
        click.day(),
        Arc::clone(&click.campaign),
        click.term.clone(),
    )
}

/// A batch's clicks by report cell, each click's cell hashed once.
pub(super) fn by_cell(all: &[Click], fresh: &[&Click]) -> CellMap<CellClicks> {
    let mut cells: CellMap<CellClicks> = CellMap::default();
    let all_fresh = fresh.len() == all.len();
    for click in all {
        let cell = cells.entry(cell_of(click)).or_default();
        cell.visitors.push(click.visitor_id);
        cell.fresh += u64::from(all_fresh);
    }
    if !all_fresh {
        for click in fresh {
            if let Some(cell) = cells.get_mut(&cell_of(click)) {
                cell.fresh += 1;
            }
        }
    }
    cells
}

/// The cells' counts of new clicks, leaving out cells with none.
pub(super) fn fresh_counts(cells: &CellMap<CellClicks>) -> impl Iterator<Item = (&Cell, u64)> {
    cells
        .iter()
        .filter(|(_, c)| c.fresh > 0)
        .map(|(cell, c)| (cell, c.fresh))
}

/// Merges pending sketches into the stored ones, in one transaction.
pub(super) fn merge_visitors(
    conn: &mut Connection,
    cells: Vec<(Cell, Sketch)>,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut read = tx.prepare_cached(
            "SELECT visitors FROM cell_visitors \
             WHERE partner = ?1 AND day = ?2 AND campaign = ?3 AND term = ?4",
        )?;
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO cell_visitors (partner, day, campaign, term, visitors) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for ((partner, day, campaign, term), mut sketch) in cells {
            let (day, term) = (day.to_string(), term.as_deref().unwrap_or(""));
            let stored: Option<Vec<u8>> = read
                .query_row(params![&*partner, day, &*campaign, term], |row| row.get(0))
                .optional()?;
            if let Some(bytes) = stored {
                sketch.merge(&Sketch::from_bytes(&bytes));
            }
            write.execute(params![
                &*partner,
                day,
                &*campaign,
                term,
                &sketch.to_bytes()
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[async_trait]
impl ClickStore for SqliteStore {
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

    async fn add_traffic(&self, batch: &crate::store::TrafficBatch) -> Result<(), StoreError> {
        self.write_traffic(batch).await
    }

    async fn traffic_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<crate::store::TrafficCount>, StoreError> {
        self.read_traffic(partner, from, to).await
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
                .prepare_cached(
                    "SELECT click FROM visitor_clicks WHERE visitor = ?1 AND at >= ?2 \
                     ORDER BY at DESC, click DESC LIMIT 1",
                )?
                .query_row(params![visitor, horizon], |row| row.get(0))
                .optional()?;
            let Some(last) = last else { return Ok(None) };
            let click = click_log::lookup(&tx, &ClickId(last))?;
            Ok(click.filter(|c| c.at >= horizon))
        })
        .await
    }

    async fn visitor_clicks(
        &self,
        visitor: &VisitorId,
        limit: usize,
    ) -> Result<Vec<Click>, StoreError> {
        let (visitor, horizon) = (visitor.0, self.horizon());
        let limit = limit.min(MAX_VISITOR_CLICKS);
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let ids: Vec<[u8; 16]> = tx
                .prepare_cached(
                    "SELECT click FROM visitor_clicks WHERE visitor = ?1 AND at >= ?2 \
                     ORDER BY at DESC, click DESC LIMIT ?3",
                )?
                .query_map(params![visitor, horizon, limit as i64], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut clicks = Vec::with_capacity(ids.len());
            for id in ids {
                clicks.extend(click_log::lookup(&tx, &ClickId(id))?);
            }
            Ok(clicks)
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
            .read_for_report(move |conn| {
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
            .read_for_report(move |conn| {
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
        // What recent batches saw and is not merged yet: looked up by cell,
        // not found by walking every pending cell (thousands, for each of
        // a report's rows, on the runtime's thread: that held redirects).
        let pending = relock(&self.visitors);
        let of: Arc<str> = partner.as_str().into();
        for cell in cells {
            let term = (!cell.term.is_empty()).then(|| Arc::from(cell.term.as_str()));
            let key = (
                Arc::clone(&of),
                cell.day,
                cell.campaign.as_str().into(),
                term,
            );
            if let Some(sketch) = pending.cells.get(&key) {
                union.merge(sketch);
            }
        }
        Ok(union.count())
    }
}

impl SqliteStore {
    /// Adds every pending click count to `click_cells` (see `counts`).
    pub(super) async fn merge_counts(&self) -> Result<(), StoreError> {
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
}
