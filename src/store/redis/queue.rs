//! The event queue in Redis: a stream with one consumer group, and the
//! `unreadable` stream as its dead letter.

use super::*;

#[async_trait]
impl EventQueue for RedisStore {
    async fn enqueue_events(&self, events: &[Event]) -> Result<Enqueued, StoreError> {
        let mut invocation = self.enqueue_events.prepare_invoke();
        invocation.key(keys::EVENT_IDS).key(keys::EVENT_STREAM);
        for event in events {
            invocation.arg(event.id.as_str()).arg(encode(event));
        }
        let accepted: usize = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Enqueued {
            accepted,
            duplicates: events.len() - accepted,
        })
    }

    async fn next_events(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        reclaim_after: Duration,
    ) -> Result<Taken, StoreError> {
        // The connection is shared with everything else, so reads never
        // block on the server: an empty answer sleeps here instead.
        let mut taken = match self.read_events(consumer, max, reclaim_after).await {
            Err(e) if error_code(&e) == Some("NOGROUP") => {
                self.create_event_group().await?;
                self.read_events(consumer, max, reclaim_after).await
            }
            other => other,
        }
        .map_err(unavailable)?;
        if taken.events.is_empty() && taken.unreadable.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
        }
        taken.events.truncate(max);
        Ok(taken)
    }

    async fn ack_events(&self, deliveries: &[String]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(keys::EVENT_STREAM)
            .arg(keys::EVENT_GROUP)
            .arg(deliveries)
            .query_async::<i64>(&mut self.conn())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn dead_letter(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // One slot ({events}): kept, acknowledged and deleted at once.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in entries {
            keep_unreadable(&mut pipe, entry, now_ms);
            pipe.cmd("XACK")
                .arg(keys::EVENT_STREAM)
                .arg(keys::EVENT_GROUP)
                .arg(&entry.delivery)
                .ignore();
            pipe.cmd("XDEL")
                .arg(keys::EVENT_STREAM)
                .arg(&entry.delivery)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn keep_unreadable(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            keep_unreadable(&mut pipe, entry, now_ms);
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn unreadable_events(&self, limit: usize) -> Result<Vec<Unreadable>, StoreError> {
        let kept: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::UNREADABLE)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(kept
            .ids
            .into_iter()
            .map(|entry| Unreadable {
                delivery: entry.get("delivery").unwrap_or_default(),
                raw: entry.get("raw").unwrap_or_default(),
                reason: entry.get("reason").unwrap_or_default(),
                at_ms: entry.get("at_ms").unwrap_or_default(),
            })
            .collect())
    }

    async fn event_queue_stats(&self) -> Result<QueueStats, StoreError> {
        let mut stats = self.stream_stats().await?;
        let ready: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::READY)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for partner in ready {
            let inbox = keys::owned(|k| keys::book(k, &partner, "inbox"));
            stats.routed += self.list_len(&inbox).await?;
        }
        Ok(stats)
    }
}

impl RedisStore {
    /// The stream's consumer group: lag and pending.
    async fn stream_stats(&self) -> Result<QueueStats, StoreError> {
        let groups: Result<Vec<HashMap<String, Value>>, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(keys::EVENT_STREAM)
            .query_async(&mut self.conn())
            .await;
        let groups = match groups {
            Ok(groups) => groups,
            // No stream yet (XINFO answers an error): nothing was ever queued.
            Err(e) => {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(keys::EVENT_STREAM)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
                if exists {
                    return Err(unavailable(e));
                }
                return Ok(QueueStats::default());
            }
        };
        let number = |group: &HashMap<String, Value>, field: &str| match group.get(field) {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let stats = groups
            .iter()
            .find(|g| matches!(g.get("name"), Some(Value::BulkString(n)) if n == keys::EVENT_GROUP.as_bytes()))
            .map(|g| QueueStats {
                waiting: number(g, "lag"),
                pending: number(g, "pending"),
                routed: 0,
            });
        match stats {
            Some(stats) => Ok(stats),
            // No worker has read yet: everything queued is waiting.
            None => redis::cmd("XLEN")
                .arg(keys::EVENT_STREAM)
                .query_async(&mut self.conn())
                .await
                .map(|waiting| QueueStats {
                    waiting,
                    ..QueueStats::default()
                })
                .map_err(unavailable),
        }
    }
    async fn create_event_group(&self) -> Result<(), StoreError> {
        let created: Result<String, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys::EVENT_STREAM)
            .arg(keys::EVENT_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Err(e) if error_code(&e) != Some("BUSYGROUP") => Err(unavailable(e)),
            _ => Ok(()),
        }
    }

    /// Entries idle in another consumer's hands first, then new ones.
    async fn read_events(
        &self,
        consumer: &str,
        max: usize,
        reclaim_after: Duration,
    ) -> Result<Taken, redis::RedisError> {
        let claimed: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(keys::EVENT_STREAM)
            .arg(keys::EVENT_GROUP)
            .arg(consumer)
            .arg(reclaim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn())
            .await?;
        let mut entries = claimed.claimed;
        if entries.is_empty() {
            let read: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(keys::EVENT_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(keys::EVENT_STREAM)
                .arg(">")
                .query_async(&mut self.conn())
                .await?;
            entries = read
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
        }
        let mut taken = Taken::default();
        for entry in entries {
            // A stream entry id starts with its queue time in ms.
            let queued_at_ms = entry
                .id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_default();
            let Some(raw) = entry.get::<String>("e") else {
                let fields: Vec<&str> = entry.map.keys().map(String::as_str).collect();
                let what = format!("fields {}", fields.join(", "));
                let reason = "no `e` field holding an event".to_owned();
                taken
                    .unreadable
                    .push(Unreadable::new(entry.id, &what, reason));
                continue;
            };
            match serde_json::from_str(&raw) {
                Ok(event) => taken.events.push(Delivery {
                    delivery: entry.id,
                    event,
                    queued_at_ms,
                }),
                Err(e) => taken
                    .unreadable
                    .push(Unreadable::new(entry.id, &raw, e.to_string())),
            }
        }
        Ok(taken)
    }
}

/// Adds `entry` to the dead letter stream, stamped `now_ms`; the stream
/// keeps about the last `UNREADABLE_KEPT`.
fn keep_unreadable(pipe: &mut Pipeline, entry: &Unreadable, now_ms: i64) {
    pipe.cmd("XADD")
        .arg(keys::UNREADABLE)
        .arg("MAXLEN")
        .arg("~")
        .arg(UNREADABLE_KEPT)
        .arg("*")
        .arg("delivery")
        .arg(&entry.delivery)
        .arg("raw")
        .arg(&entry.raw)
        .arg("reason")
        .arg(&entry.reason)
        .arg("at_ms")
        .arg(now_ms)
        .ignore();
}
