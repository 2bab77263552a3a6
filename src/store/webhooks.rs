//! What the stores keep for webhooks: the endpoints, the feed of events
//! gathered from the partners' outboxes, and each endpoint's place in the
//! feed and record of deliveries.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;
use crate::webhooks::delivery::{DeliveryCursor, FeedEvent, WebhookDelivery};
use crate::webhooks::WebhookEndpoint;

/// Webhook endpoints, the feed and deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Registers an endpoint; it is sent the events that reach the feed
    /// from now on.
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), StoreError>;
    /// Every endpoint, oldest first.
    async fn webhooks(&self) -> Result<Vec<WebhookEndpoint>, StoreError>;
    /// Deletes an endpoint, its place in the feed and its deliveries;
    /// answers whether it existed.
    async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError>;

    /// Moves events committed to partners' outboxes into the feed, in
    /// each partner's order, each exactly once; answers how many moved.
    /// The embedded store commits them to the feed directly.
    async fn gather_outboxes(&self) -> Result<usize, StoreError>;
    /// Feed events after position `after`, oldest first, at most `max`.
    async fn feed(&self, after: u64, max: usize) -> Result<Vec<FeedEvent>, StoreError>;
    /// Forgets feed events up to position `upto`, which every endpoint
    /// is past.
    async fn trim_feed(&self, upto: u64) -> Result<(), StoreError>;
    /// The newest feed position.
    async fn feed_head(&self) -> Result<u64, StoreError>;

    /// Where an endpoint stands in the feed.
    async fn delivery_cursor(&self, endpoint: &str) -> Result<DeliveryCursor, StoreError>;
    /// Saves an endpoint's new place and the delivery it attempted,
    /// together; `false`, writing nothing, when the endpoint is gone.
    async fn save_delivery(
        &self,
        endpoint: &str,
        cursor: Option<&DeliveryCursor>,
        delivery: Option<&WebhookDelivery>,
    ) -> Result<bool, StoreError>;
    /// An endpoint's deliveries, newest first, before feed position
    /// `before`.
    async fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// One delivery of an endpoint, by event id.
    async fn delivery(
        &self,
        endpoint: &str,
        event: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError>;

    /// Takes or renews the right to deliver, for `ttl`: one instance
    /// delivers at a time, so each endpoint's events leave in order.
    async fn lease_deliveries(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
}
