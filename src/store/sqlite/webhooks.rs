//! Webhooks in SQLite: endpoints, the feed (written by the book steps'
//! own transactions, so there is no outbox to gather), each endpoint's
//! cursor and its deliveries.

use super::*;
use crate::store::WebhookStore;
use crate::webhooks::delivery::{DeliveryCursor, FeedEvent, WebhookDelivery, KEPT_DELIVERIES};
use crate::webhooks::outbox::OutboxEvent;
use crate::webhooks::WebhookEndpoint;

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        let (id, record) = (endpoint.id.clone(), to_json(endpoint));
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO webhooks (id, record) VALUES (?1, ?2)",
                params![id, record],
            )?;
            let cursor = DeliveryCursor {
                after: feed_head(&tx)?,
                retry: None,
            };
            tx.execute(
                "INSERT OR REPLACE INTO webhook_cursors (endpoint, cursor) VALUES (?1, ?2)",
                params![id, to_json(&cursor)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let mut endpoints: Vec<WebhookEndpoint> = self
            .read(|conn| json_rows(conn, "SELECT record FROM webhooks", []))
            .await?;
        endpoints.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(endpoints)
    }

    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existed = tx.execute("DELETE FROM webhooks WHERE id = ?1", [&id])? > 0;
            tx.execute("DELETE FROM webhook_cursors WHERE endpoint = ?1", [&id])?;
            tx.execute("DELETE FROM webhook_deliveries WHERE endpoint = ?1", [&id])?;
            tx.commit()?;
            Ok(existed)
        })
        .await
    }

    async fn gather_outboxes(&self) -> Result<usize, StoreError> {
        // Book steps write the feed in their own transaction.
        Ok(0)
    }

    async fn feed(&self, after: u64, max: usize) -> Result<Vec<FeedEvent>, StoreError> {
        let rows: Vec<(i64, String)> = self
            .read(move |conn| {
                let mut query = conn.prepare_cached(
                    "SELECT seq, event FROM webhook_feed WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = query.query_map(params![after as i64, max as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(seq, event)| {
                Ok(FeedEvent {
                    seq: seq as u64,
                    event: OutboxEvent::from_body(event)
                        .map_err(|e| StoreError::corrupt("webhook event", e))?,
                })
            })
            .collect()
    }

    async fn trim_feed(&self, upto: u64) -> Result<(), StoreError> {
        let upto = upto.min(i64::MAX as u64) as i64;
        self.write_unsynced(move |conn| {
            conn.prepare_cached("DELETE FROM webhook_feed WHERE seq <= ?1")?
                .execute([upto])?;
            Ok(())
        })
        .await
    }

    async fn feed_head(&self) -> Result<u64, StoreError> {
        self.read(|conn| feed_head(conn)).await
    }

    async fn delivery_cursor(&self, endpoint: &str) -> Result<DeliveryCursor, StoreError> {
        let endpoint = endpoint.to_owned();
        let cursors: Vec<DeliveryCursor> = self
            .read(move |conn| {
                json_rows(
                    conn,
                    "SELECT cursor FROM webhook_cursors WHERE endpoint = ?1",
                    [endpoint],
                )
            })
            .await?;
        Ok(cursors.into_iter().next().unwrap_or_default())
    }

    async fn save_delivery(
        &self,
        endpoint: &str,
        cursor: Option<&DeliveryCursor>,
        delivery: Option<&WebhookDelivery>,
    ) -> Result<bool, StoreError> {
        let endpoint = endpoint.to_owned();
        let cursor = cursor.map(to_json);
        let delivery = delivery.map(|d| (d.seq as i64, d.event_id.clone(), to_json(d)));
        // Unsynced: a save lost in a power cut sends its event again, with
        // the same id, which receivers take as a retry.
        self.write_unsynced(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists = tx
                .prepare_cached("SELECT 1 FROM webhooks WHERE id = ?1")?
                .exists([&endpoint])?;
            if !exists {
                return Ok(false);
            }
            if let Some(cursor) = cursor {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO webhook_cursors (endpoint, cursor) VALUES (?1, ?2)",
                )?
                .execute(params![endpoint, cursor])?;
            }
            if let Some((seq, event_id, record)) = delivery {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO webhook_deliveries (endpoint, seq, event_id, record) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![endpoint, seq, event_id, record])?;
                forget_old_deliveries(&tx, &endpoint)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let endpoint = endpoint.to_owned();
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        self.read(move |conn| {
            json_rows(
                conn,
                "SELECT record FROM webhook_deliveries WHERE endpoint = ?1 AND seq < ?2 \
                 ORDER BY seq DESC LIMIT ?3",
                params![endpoint, before, limit as i64],
            )
        })
        .await
    }

    async fn delivery(
        &self,
        endpoint: &str,
        event: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let (endpoint, event) = (endpoint.to_owned(), event.to_owned());
        let found: Vec<WebhookDelivery> = self
            .read(move |conn| {
                json_rows(
                    conn,
                    "SELECT record FROM webhook_deliveries WHERE endpoint = ?1 AND event_id = ?2",
                    params![endpoint, event],
                )
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn lease_deliveries(&self, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        // One process owns the file, and it runs one delivery task.
        Ok(true)
    }
}

/// The newest position the feed has given, 0 before the first.
fn feed_head(conn: &Connection) -> Result<u64, StoreError> {
    let head: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'webhook_feed'")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(head.unwrap_or(0) as u64)
}

/// Keeps the newest `KEPT_DELIVERIES` of an endpoint's deliveries.
fn forget_old_deliveries(tx: &rusqlite::Transaction<'_>, endpoint: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM webhook_deliveries WHERE endpoint = ?1 AND seq < \
         (SELECT seq FROM webhook_deliveries WHERE endpoint = ?1 \
          ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![endpoint, KEPT_DELIVERIES as i64 - 1])?;
    Ok(())
}
