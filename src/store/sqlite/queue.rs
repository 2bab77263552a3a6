//! The event queue in SQLite: `event_queue` rows, taken in memory and
//! deleted when acknowledged, and the `unreadable_events` dead letter.

use super::*;

#[async_trait]
impl EventQueue for SqliteStore {
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

    async fn dead_letter(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        let seqs: Vec<i64> = entries
            .iter()
            .filter_map(|e| e.delivery.parse().ok())
            .collect();
        let queued = seqs.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            keep_unreadable(&tx, &entries, now_ms)?;
            for seq in &queued {
                tx.prepare_cached("DELETE FROM event_queue WHERE seq = ?1")?
                    .execute([seq])?;
            }
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

    async fn keep_unreadable(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            keep_unreadable(&tx, &entries, now_ms)?;
            tx.commit()?;
            Ok(())
        })
        .await
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
}

impl SqliteStore {
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

/// Adds `entries` to the dead letter, stamped `now_ms`, and drops the
/// oldest beyond `UNREADABLE_KEPT`.
fn keep_unreadable(
    tx: &rusqlite::Transaction<'_>,
    entries: &[Unreadable],
    now_ms: i64,
) -> Result<(), StoreError> {
    for entry in entries {
        tx.prepare_cached(
            "INSERT INTO unreadable_events (delivery, raw, reason, at_ms) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![entry.delivery, entry.raw, entry.reason, now_ms])?;
    }
    tx.execute(
        "DELETE FROM unreadable_events WHERE seq <= \
         (SELECT MAX(seq) FROM unreadable_events) - ?1",
        [UNREADABLE_KEPT as i64],
    )?;
    Ok(())
}
