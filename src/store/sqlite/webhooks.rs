//! Webhook endpoints in SQLite: one row each.

use super::*;
use crate::store::WebhookStore;
use crate::webhooks::WebhookEndpoint;

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError> {
        let (id, record) = (endpoint.id.clone(), to_json(endpoint));
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO webhooks (id, record) VALUES (?1, ?2)",
                params![id, record],
            )?;
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
        self.write(move |conn| Ok(conn.execute("DELETE FROM webhooks WHERE id = ?1", [id])? > 0))
            .await
    }
}
