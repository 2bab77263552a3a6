//! Webhooks in Redis. Endpoints, the feed, cursors and deliveries live on
//! the `{webhooks}` slot. A book step writes its events to the partner's
//! own outbox stream, in the commit's script (the partner's slot), having
//! marked the partner first; the delivering instance gathers marked
//! outboxes into the feed, each entry exactly once (the move checks and
//! advances the partner's gathered mark in one script).

use std::time::Duration;

use chrono::Utc;
use redis::streams::StreamRangeReply;

use super::*;
use crate::store::WebhookStore;
use crate::webhooks::delivery::{DeliveryCursor, FeedEvent, WebhookDelivery, KEPT_DELIVERIES};
use crate::webhooks::outbox::OutboxEvent;
use crate::webhooks::WebhookEndpoint;

/// Partners gathered per round, oldest mark first.
const GATHER_PARTNERS: usize = 200;
/// Outbox entries (commits) moved per partner per round.
const GATHER_ENTRIES: usize = 100;
/// A mark stays this long after the outbox was last seen empty: it is
/// written before the commit, so a commit still on its way (or a step
/// that died after committing) is gathered on a later round.
const MARK_GRACE_MS: i64 = 5 * 60 * 1000;

#[async_trait]
impl WebhookStore for RedisStore {
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        self.webhook_scripts
            .insert
            .key(keys::WEBHOOKS)
            .key(keys::WEBHOOK_CURSORS)
            .key(keys::WEBHOOK_FEED_SEQ)
            .arg(&endpoint.id)
            .arg(encode(endpoint))
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let records: Vec<String> = redis::cmd("HVALS")
            .arg(keys::WEBHOOKS)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut endpoints = records
            .iter()
            .map(|r| decode::<WebhookEndpoint>(r))
            .collect::<Result<Vec<_>, _>>()?;
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(endpoints)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let (removed, _, _, _): (i64, i64, i64, i64) = redis::pipe()
            .atomic()
            .hdel(keys::WEBHOOKS, id)
            .hdel(keys::WEBHOOK_CURSORS, id)
            .del(keys::owned(|k| keys::webhook_deliveries(k, id, "records")))
            .del(keys::owned(|k| keys::webhook_deliveries(k, id, "order")))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn gather_outboxes(&self) -> Result<usize, StoreError> {
        let marked: Vec<(String, String)> = redis::cmd("ZRANGE")
            .arg(keys::OUTBOX_MARKS)
            .arg(0)
            .arg(GATHER_PARTNERS - 1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut moved = 0;
        for (partner, mark) in marked {
            moved += self.gather_outbox(&partner, &mark).await?;
        }
        Ok(moved)
    }

    async fn feed(&self, after: u64, max: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let rows: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(keys::WEBHOOK_FEED)
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        rows.into_iter()
            .map(|(event, seq)| {
                Ok(FeedEvent {
                    seq,
                    event: OutboxEvent::from_body(event)
                        .map_err(|e| StoreError::corrupt("webhook event", e))?,
                })
            })
            .collect()
    }

    async fn trim_feed(&self, upto: u64) -> Result<(), StoreError> {
        self.exec(
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(keys::WEBHOOK_FEED)
                .arg("-inf")
                .arg(upto),
        )
        .await
    }

    async fn feed_head(&self) -> Result<u64, StoreError> {
        let head: Option<u64> = redis::cmd("GET")
            .arg(keys::WEBHOOK_FEED_SEQ)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(head.unwrap_or(0))
    }

    async fn delivery_cursor(&self, endpoint: &str) -> Result<DeliveryCursor, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::WEBHOOK_CURSORS)
            .arg(endpoint)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.map_or(Ok(DeliveryCursor::default()), |r| decode(&r))
    }

    async fn save_delivery(
        &self,
        endpoint: &str,
        cursor: Option<&DeliveryCursor>,
        delivery: Option<&WebhookDelivery>,
    ) -> Result<bool, StoreError> {
        let saved: i64 = self
            .webhook_scripts
            .save
            .key(keys::WEBHOOKS)
            .key(keys::WEBHOOK_CURSORS)
            .key(keys::owned(|k| {
                keys::webhook_deliveries(k, endpoint, "records")
            }))
            .key(keys::owned(|k| {
                keys::webhook_deliveries(k, endpoint, "order")
            }))
            .arg(endpoint)
            .arg(cursor.map(encode).unwrap_or_default())
            .arg(delivery.map_or("", |d| d.event_id.as_str()))
            .arg(delivery.map(encode).unwrap_or_default())
            .arg(delivery.map_or(0, |d| d.seq))
            .arg(KEPT_DELIVERIES)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(saved == 1)
    }

    async fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let below = before.map_or("+inf".to_owned(), |b| format!("({b}"));
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::owned(|k| {
                keys::webhook_deliveries(k, endpoint, "order")
            }))
            .arg(below)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let records = keys::owned(|k| keys::webhook_deliveries(k, endpoint, "records"));
        self.json_fields(&records, &ids).await
    }

    async fn delivery(
        &self,
        endpoint: &str,
        event: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::owned(|k| {
                keys::webhook_deliveries(k, endpoint, "records")
            }))
            .arg(event)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.map(|r| decode(&r)).transpose()
    }

    async fn lease_deliveries(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let held: i64 = self
            .webhook_scripts
            .lease
            .key(keys::WEBHOOK_LEASE)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }
}

impl RedisStore {
    /// Marks a partner whose next commit writes webhook events; before the
    /// commit, so that no committed event goes unmarked.
    pub(super) async fn mark_outbox(&self, partner: &PartnerId) -> Result<(), StoreError> {
        self.exec(
            redis::cmd("ZADD")
                .arg(keys::OUTBOX_MARKS)
                .arg(Utc::now().timestamp_millis())
                .arg(partner.as_str()),
        )
        .await
    }

    /// Moves one partner's outbox entries past its gathered mark into the
    /// feed (or drops them, with no endpoint to hear of them), then deletes
    /// them from the outbox; unmarks a partner whose outbox has stayed
    /// empty past the grace.
    async fn gather_outbox(&self, partner: &str, mark: &str) -> Result<usize, StoreError> {
        let outbox = keys::owned(|k| keys::book(k, partner, "outbox"));
        let from: Option<String> = redis::cmd("HGET")
            .arg(keys::OUTBOX_GATHERED)
            .arg(partner)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let from = from.unwrap_or_else(|| "0-0".to_owned());
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&outbox)
            .arg("+")
            .arg(format!("({from}"))
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(newest) = newest.ids.first().map(|entry| entry.id.clone()) else {
            self.unmark_outbox(partner, mark).await?;
            return Ok(0);
        };
        // Only the ids, while nobody listens: the bodies are not read back.
        let dropped: i64 = self
            .webhook_scripts
            .drop
            .key(keys::OUTBOX_GATHERED)
            .key(keys::WEBHOOKS)
            .arg(partner)
            .arg(&from)
            .arg(&newest)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match dropped {
            1 => {
                self.trim_outbox(&outbox, &newest).await?;
                Ok(0)
            }
            0 => Ok(0),
            _ => self.move_outbox(partner, &outbox, &from).await,
        }
    }

    /// Forgets the mark of a partner whose outbox has stayed empty past
    /// the grace.
    async fn unmark_outbox(&self, partner: &str, mark: &str) -> Result<(), StoreError> {
        let marked_at = mark.parse::<f64>().unwrap_or(0.0) as i64;
        if marked_at < Utc::now().timestamp_millis() - MARK_GRACE_MS {
            self.webhook_scripts
                .unmark
                .key(keys::OUTBOX_MARKS)
                .arg(partner)
                .arg(mark)
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Deletes the outbox entries up to `last`, past the gathered mark.
    async fn trim_outbox(&self, outbox: &str, last: &str) -> Result<(), StoreError> {
        let (ms, seq) = last
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms, seq.parse::<u64>().ok()?)))
            .ok_or_else(|| StoreError::corrupt("outbox stream id", last))?;
        let above = format!("{ms}-{}", seq + 1);
        self.exec(redis::cmd("XTRIM").arg(outbox).arg("MINID").arg(above))
            .await
    }

    /// Moves the outbox entries after `from` into the feed, once.
    async fn move_outbox(
        &self,
        partner: &str,
        outbox: &str,
        from: &str,
    ) -> Result<usize, StoreError> {
        let read: StreamRangeReply = redis::cmd("XRANGE")
            .arg(outbox)
            .arg(format!("({from}"))
            .arg("+")
            .arg("COUNT")
            .arg(GATHER_ENTRIES)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(last) = read.ids.last().map(|entry| entry.id.clone()) else {
            return Ok(0);
        };
        let mut invocation = self.webhook_scripts.gather.prepare_invoke();
        invocation
            .key(keys::OUTBOX_GATHERED)
            .key(keys::WEBHOOK_FEED)
            .key(keys::WEBHOOK_FEED_SEQ)
            .key(keys::WEBHOOKS)
            .arg(partner)
            .arg(from)
            .arg(&last);
        for entry in &read.ids {
            // One entry per commit: its events' bodies, a line each.
            let events: String = entry
                .get("e")
                .ok_or_else(|| StoreError::corrupt("outbox entry", "no events"))?;
            for body in events.split('\n') {
                invocation.arg(body);
            }
        }
        let moved: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        // Gone from the outbox only once in the feed: a crash in between
        // leaves them behind the mark, where no read looks again.
        self.trim_outbox(outbox, &last).await?;
        Ok(if moved == 1 { read.ids.len() } else { 0 })
    }
}
