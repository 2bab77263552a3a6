//! Partners' books in SQLite: the inbox, the book, customer and
//! conversion-cell records, history and the ledger, each book step
//! committed in one transaction guarded by the book's version.

use super::*;

#[async_trait]
impl BookStore for SqliteStore {
    async fn load_book(
        &self,
        partner: &PartnerId,
        request: &BookRequest,
    ) -> Result<BookView, StoreError> {
        let partner = partner.as_str().to_owned();
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
            view.cells.insert(
                cell_of_key(&key)?,
                decode_record::<ConversionCounts>(&counts.0)?,
            );
        }
        for (_, record) in stored.payouts {
            let payout: Payout = from_json(&record)?;
            view.payouts.insert(payout.id.clone(), payout);
        }
        if let Some(from) = history_from {
            view.history = Some(History::from_members(
                from,
                stored.history.iter().map(|(m, at)| (m.as_str(), *at)),
            ));
        }
        Ok(view)
    }

    async fn push_inbox(&self, partner: &PartnerId, items: &[InboxItem]) -> Result<(), StoreError> {
        let partner = partner.as_str().to_owned();
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

    async fn ready_partners(&self, max: usize) -> Result<Vec<PartnerId>, StoreError> {
        self.read_for_worker(move |conn| {
            let mut query = conn
                .prepare_cached("SELECT DISTINCT partner FROM inbox ORDER BY partner LIMIT ?1")?;
            let partners = query
                .query_map([max as i64], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            partners.iter().map(|id| partner_of_key(id)).collect()
        })
        .await
    }

    async fn read_inbox(&self, partner: &PartnerId, max: usize) -> Result<Inbox, StoreError> {
        let partner = partner.as_str().to_owned();
        let key = partner.clone();
        let entries: Vec<String> = self
            .read_for_worker(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT item FROM inbox WHERE partner = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = query.query_map(params![partner, max as i64], |row| row.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await?;
        Ok(Inbox::decode(&key, &entries))
    }

    async fn settle_ready(&self, _partner: &PartnerId) -> Result<(), StoreError> {
        // Ready partners are read off the inbox itself: nothing to mark.
        Ok(())
    }

    async fn lock_book(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let partner = partner.as_str();
        let now = std::time::Instant::now();
        let mut locks = relock(&self.book_locks);
        // Taken is taken, by another worker or by the same one.
        if locks.get(partner).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        locks.insert(partner.to_owned(), (holder.to_owned(), now + ttl));
        Ok(true)
    }

    async fn unlock_book(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        let partner = partner.as_str();
        let mut locks = relock(&self.book_locks);
        if locks.get(partner).is_some_and(|(h, _)| h == holder) {
            locks.remove(partner);
        }
        Ok(())
    }

    async fn commit_book(
        &self,
        partner: &PartnerId,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError> {
        let partner = partner.as_str();
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
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(ConversionCell, ConversionCounts)>, StoreError> {
        let partner = partner.as_str().to_owned();
        self.read_for_report(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT cell, counts FROM conversions WHERE partner = ?1 ORDER BY cell",
            )?;
            let rows = query.query_map([&partner], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, StoredRecord>(1)?))
            })?;
            let mut cells = Vec::new();
            for row in rows {
                let (key, counts) = row?;
                let cell = cell_of_key(&key)?;
                if cell.day >= from && cell.day <= to {
                    cells.push((cell, decode_record(&counts.0)?));
                }
            }
            Ok(cells)
        })
        .await
    }

    async fn ledger(
        &self,
        partner: &PartnerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let partner = partner.as_str().to_owned();
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
    /// The requested payouts' JSON records.
    payouts: Vec<(String, String)>,
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
            request.cells.iter().map(ConversionCell::key),
        )?,
        history: Vec::new(),
        payouts: Vec::new(),
    };
    for id in &request.payouts {
        let record: Option<String> = tx
            .prepare_cached("SELECT record FROM payouts WHERE partner = ?1 AND id = ?2")?
            .query_row(params![partner, id.as_str()], |row| row.get(0))
            .optional()?;
        stored.payouts.extend(record.map(|r| (id.to_string(), r)));
    }
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
fn records_of(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    partner: &str,
    keys: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<Vec<(String, StoredRecord)>, StoreError> {
    let mut query = tx.prepare_cached(sql)?;
    let mut found = Vec::new();
    for key in keys {
        let key = key.as_ref();
        let record: Option<StoredRecord> = query
            .query_row(params![partner, key], |row| row.get(0))
            .optional()?;
        found.extend(record.map(|record| (key.to_owned(), record)));
    }
    Ok(found)
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
    /// Id, status and JSON record of each payout written.
    payouts: Vec<(String, &'static str, String)>,
    /// Customers written with a hold: id and signup ms.
    holds: Vec<(String, i64)>,
    /// The bodies of the webhook events the step reports: straight into
    /// the feed, in this same transaction.
    outbox: Vec<String>,
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
                .map(|(cell, counts)| (cell.key(), encode_record(counts)))
                .collect(),
            history: changes.history.clone(),
            entries: changes
                .entries
                .iter()
                .map(|e| (e.seq, to_json(e)))
                .collect(),
            inbox_taken: changes.inbox_taken,
            payouts: changes
                .payouts
                .iter()
                .map(|p| (p.id.to_string(), p.status.as_str(), to_json(p)))
                .collect(),
            holds: changes
                .customers
                .iter()
                .filter_map(|c| Some((c.id.clone(), c.hold.as_ref()?.held_at)))
                .collect(),
            outbox: changes.outbox.iter().map(|e| e.body.clone()).collect(),
        }
    }

    /// Puts the step's webhook events in the feed, if any endpoint would
    /// hear of them: read in this transaction, so an endpoint registered
    /// before the commit gets them, and with none nothing is written.
    fn write_outbox(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let listening: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM webhooks)")?
            .query_row([], |row| row.get(0))?;
        if listening {
            let mut event = tx.prepare_cached("INSERT INTO webhook_feed (event) VALUES (?1)")?;
            for json in &self.outbox {
                event.execute([json])?;
            }
        }
        Ok(())
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
        let mut hold = tx.prepare_cached(
            "INSERT OR IGNORE INTO holds (customer, partner, held_at) VALUES (?1, ?2, ?3)",
        )?;
        for (id, held_at) in &self.holds {
            hold.execute(params![id, partner, held_at])?;
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
        let mut payout = tx.prepare_cached(
            "INSERT INTO payouts (id, partner, status, record) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, record = excluded.record",
        )?;
        for (id, status, record) in &self.payouts {
            payout.execute(params![id, partner, status, record])?;
        }
        self.write_outbox(tx)?;
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
