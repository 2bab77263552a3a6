//! Partners' books in Redis: the inbox list, the book hash and its
//! records, the ledger, each book step committed by one script guarded by
//! the book's version.

use super::*;

#[async_trait]
impl BookStore for RedisStore {
    async fn load_book(
        &self,
        partner: &PartnerId,
        request: &BookRequest,
    ) -> Result<BookView, StoreError> {
        let pipe = load_book_pipeline(partner.as_str(), request);
        type Loaded = (
            Option<u64>,
            Option<Vec<u8>>,
            Vec<Option<Vec<u8>>>,
            Vec<Option<Vec<u8>>>,
            Vec<Option<String>>,
            Value,
        );
        let (version, book, customer_rows, cell_rows, payout_rows, history): Loaded = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut view = BookView {
            book: book
                .map(|b| decode_record(&b))
                .transpose()?
                .unwrap_or_default(),
            version: version.unwrap_or_default(),
            ..BookView::default()
        };
        for (id, raw) in request.customers.iter().zip(customer_rows) {
            if let Some(raw) = raw {
                view.customers
                    .insert(id.clone(), decode_record::<Customer>(&raw)?);
            }
        }
        for (cell, raw) in request.cells.iter().zip(cell_rows) {
            if let Some(raw) = raw {
                view.cells
                    .insert(cell.clone(), decode_record::<ConversionCounts>(&raw)?);
            }
        }
        for raw in payout_rows.into_iter().flatten() {
            let payout: Payout = decode(&raw)?;
            view.payouts.insert(payout.id.clone(), payout);
        }
        if let Some(from) = request.history_from {
            let members: Vec<(String, f64)> =
                redis::from_redis_value(history).map_err(|e| StoreError::corrupt("history", e))?;
            view.history = Some(History::from_members(
                from,
                members.iter().map(|(m, at)| (m.as_str(), *at as i64)),
            ));
        }
        Ok(view)
    }

    async fn push_inbox(&self, partner: &PartnerId, items: &[InboxItem]) -> Result<(), StoreError> {
        let partner = partner.as_str();
        if items.is_empty() {
            return Ok(());
        }
        let mut push = redis::cmd("RPUSH");
        push.arg(keys::owned(|k| keys::book(k, partner, "inbox")));
        for item in items {
            push.arg(encode(item));
        }
        self.exec(&push).await?;
        // After the push: a worker that settles the set in between sees
        // the events, or this marks the partner again.
        self.exec(redis::cmd("SADD").arg(keys::READY).arg(partner))
            .await
    }

    async fn ready_partners(&self, max: usize) -> Result<Vec<PartnerId>, StoreError> {
        let partners: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(keys::READY)
            .arg(max)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        partners.iter().map(|id| partner_of_key(id)).collect()
    }

    async fn read_inbox(&self, partner: &PartnerId, max: usize) -> Result<Inbox, StoreError> {
        let partner = partner.as_str();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(keys::owned(|k| keys::book(k, partner, "inbox")))
            .arg(0)
            .arg(max.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Inbox::decode(partner, &raw))
    }

    async fn settle_ready(&self, partner: &PartnerId) -> Result<(), StoreError> {
        let partner = partner.as_str();
        let inbox = keys::owned(|k| keys::book(k, partner, "inbox"));
        if self.list_len(&inbox).await? > 0 {
            return self
                .exec(redis::cmd("SADD").arg(keys::READY).arg(partner))
                .await;
        }
        self.exec(redis::cmd("SREM").arg(keys::READY).arg(partner))
            .await?;
        // A push may have landed between the two: look again.
        if self.list_len(&inbox).await? > 0 {
            self.exec(redis::cmd("SADD").arg(keys::READY).arg(partner))
                .await?;
        }
        Ok(())
    }

    async fn lock_book(
        &self,
        partner: &PartnerId,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let partner = partner.as_str();
        let taken: Option<String> = redis::cmd("SET")
            .arg(keys::owned(|k| keys::book(k, partner, "lock")))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some())
    }

    async fn unlock_book(&self, partner: &PartnerId, holder: &str) -> Result<(), StoreError> {
        let partner = partner.as_str();
        self.unlock_book
            .key(keys::owned(|k| keys::book(k, partner, "lock")))
            .arg(holder)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn commit_book(
        &self,
        partner: &PartnerId,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError> {
        self.index_holds(partner, &changes.customers).await?;
        if !changes.outbox.is_empty() {
            self.mark_outbox(partner).await?;
        }
        let partner = partner.as_str();
        let mut invocation = self.commit_book.prepare_invoke();
        for part in [
            "version",
            "book",
            "customers",
            "conversions",
            "history",
            "ledger",
            "inbox",
            "payouts",
            "payout_ids",
            "outbox",
        ] {
            invocation.key(keys::owned(|k| keys::book(k, partner, part)));
        }
        invocation
            .arg(version)
            .arg(changes.inbox_taken)
            .arg(encode_record(&changes.book));
        invocation.arg(changes.customers.len());
        for customer in &changes.customers {
            invocation.arg(&customer.id).arg(encode_record(customer));
        }
        invocation.arg(changes.cells.len());
        for (cell, counts) in &changes.cells {
            invocation.arg(cell.key()).arg(encode_record(counts));
        }
        invocation.arg(changes.history.len());
        for change in &changes.history {
            match change {
                HistoryChange::Add(member, at) => invocation.arg("+").arg(*at).arg(member),
                HistoryChange::Remove(member, _) => invocation.arg("-").arg(member),
            };
        }
        invocation.arg(changes.payouts.len());
        for payout in &changes.payouts {
            invocation.arg(payout.id.as_str()).arg(encode(payout));
        }
        // Bodies are compact JSON, without a raw newline: one a line.
        let bodies: Vec<&str> = changes.outbox.iter().map(|e| e.body.as_str()).collect();
        invocation.arg(bodies.join("\n"));
        for entry in &changes.entries {
            invocation.arg(encode(entry));
        }
        let outcome: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(if outcome == 1 {
            Commit::Applied
        } else {
            Commit::Conflict
        })
    }

    async fn conversion_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(ConversionCell, ConversionCounts)>, StoreError> {
        let partner = partner.as_str();
        let cells: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(keys::owned(|k| keys::book(k, partner, "conversions")))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut counts = Vec::new();
        for (key, raw) in cells {
            let cell = cell_of_key(&key)?;
            if cell.day >= from && cell.day <= to {
                counts.push((cell, decode_record(&raw)?));
            }
        }
        Ok(counts)
    }

    async fn ledger(
        &self,
        partner: &PartnerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let partner = partner.as_str();
        let key = keys::owned(|k| keys::book(k, partner, "ledger"));
        // Entry `seq` sits at index seq - 1: the list only grows, in order.
        let len = self.list_len(&key).await?;
        let below = before.map_or(len + 1, |b| b.min(len + 1));
        if below <= 1 || limit == 0 {
            return Ok(Vec::new());
        }
        let stop = below - 2;
        let start = stop.saturating_sub(limit as u64 - 1);
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(start)
            .arg(stop)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.iter().rev().map(|r| decode(r)).collect()
    }
}

impl RedisStore {
    pub(super) async fn list_len(&self, key: &str) -> Result<u64, StoreError> {
        redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

/// What `load_book` reads, in one atomic pipeline on the partner's slot:
/// version, book, the requested customers and cells, and the history (or
/// whether there is one).
fn load_book_pipeline(partner: &str, request: &BookRequest) -> Pipeline {
    let key = |part: &str| keys::owned(|k| keys::book(k, partner, part));
    // HMGET needs at least one field: "" names nothing.
    let or_nothing = |keys: Vec<String>| -> Vec<String> {
        if keys.is_empty() {
            vec![String::new()]
        } else {
            keys
        }
    };
    let customers = or_nothing(request.customers.iter().cloned().collect());
    let cells = or_nothing(request.cells.iter().map(ConversionCell::key).collect());
    let payouts = or_nothing(request.payouts.iter().map(|id| id.to_string()).collect());
    let mut pipe = redis::pipe();
    pipe.atomic()
        .get(key("version"))
        .get(key("book"))
        .cmd("HMGET")
        .arg(key("customers"))
        .arg(&customers)
        .cmd("HMGET")
        .arg(key("conversions"))
        .arg(&cells)
        .cmd("HMGET")
        .arg(key("payouts"))
        .arg(&payouts);
    match request.history_from {
        Some(from) => {
            pipe.cmd("ZRANGE")
                .arg(key("history"))
                .arg(from)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("WITHSCORES");
        }
        None => {
            pipe.exists(key("history"));
        }
    }
    pipe
}
