//! Webhook endpoints in Redis: one hash, id → endpoint, on the
//! `{webhooks}` slot.

use super::*;
use crate::store::WebhookStore;
use crate::webhooks::WebhookEndpoint;

#[async_trait]
impl WebhookStore for RedisStore {
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        self.exec(
            redis::cmd("HSET")
                .arg(keys::WEBHOOKS)
                .arg(&endpoint.id)
                .arg(encode(endpoint)),
        )
        .await
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
        let removed: i64 = redis::cmd("HDEL")
            .arg(keys::WEBHOOKS)
            .arg(id)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }
}
