//! The Redis store: a single node or a Redis Cluster, keys hash-tagged so
//! that every multi-key operation stays on one slot (`docs/redis-keys.md`).
//!
//! - `keys`: the key names
//! - `scripts`: the Lua scripts (`scripts/*.lua`)
//! - here: the connection, and what the concerns below share
//! - `catalog`: partners and campaigns
//! - `clicks`: click batches and the report's counters
//! - `click_batch`: how a batch of clicks becomes one pipeline per slot
//! - `queue`: the event stream and its dead letter
//! - `routing`: customers' claims and parked events
//! - `books`: partners' books, inboxes and ledgers
//! - `payouts`: payouts' owners and status indexes
//! - `traffic`: bot and suspect tallies

mod books;
mod catalog;
mod click_batch;
mod clicks;
mod coupons;
mod holds;
mod keys;
mod payouts;
mod queue;
mod routing;
mod scripts;
mod traffic;
mod webhooks;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde::Serialize;

use super::prelude::*;
use super::record::{decode_record, encode_record};
use super::{cell_of_key, partner_of_key};
use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, Commit, CounterCell, Delivery, Enqueued, Inbox,
    InboxItem, ParkedEvent, Partner, QueueStats, Route, StoreError, Taken, Unreadable,
    MAX_VISITOR_CLICKS, UNREADABLE_KEPT,
};
use crate::conversions::book::{
    BookRequest, BookView, Changes, ConversionCell, History, HistoryChange, LedgerEntry, Payout,
};
use crate::conversions::customer::{ConversionCounts, Customer, Referral};
use crate::conversions::events::Event;
use crate::ids::PartnerId;
use crate::ids::{ClickId, CustomerId, IdHashing, VisitorId};

use self::click_batch::{script_source, ClickBatch, ClickBuffers, ClickRecord, ClickScripts};
use self::scripts::*;

/// How long a command may wait for its answer: a store that does not answer
/// in time counts as down, and callers retry later.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One connection to a single node or a cluster; both multiplex and
/// reconnect by themselves, so clones share them.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

pub struct RedisStore {
    connection: Connection,
    enqueue_events: Script,
    commit_book: Script,
    route_event: Script,
    claim_customer: Script,
    expire_parked: Script,
    unlock_book: Script,
    window_secs: u64,
    click_scripts: ClickScripts,
    insert_partner: Script,
    update_partner: Script,
    insert_campaign: Script,
    insert_coupon: Script,
    webhook_scripts: WebhookScripts,
}

/// The scripts of webhook delivery (`webhooks.rs`).
struct WebhookScripts {
    gather: Script,
    drop: Script,
    unmark: Script,
    insert: Script,
    save: Script,
    lease: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::unavailable(e)
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt("redis JSON record", e))
}

/// A server error's code (`NOGROUP`, `BUSYGROUP`, …): errors are told
/// apart by it, never by their text.
fn error_code(e: &redis::RedisError) -> Option<&str> {
    e.code()
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize to JSON")
}

impl RedisStore {
    /// Connects lazily: the store is usable at once and every call fails
    /// fast while Redis is unreachable. `urls` is one URL, or a cluster's
    /// seed URLs separated by commas.
    pub async fn connect(urls: &str, cluster: bool, window: Duration) -> Result<Self, StoreError> {
        let connection = if cluster {
            let seeds: Vec<&str> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect();
            let client = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(2)
                .build()
                .map_err(unavailable)?;
            Connection::Cluster(client.get_async_connection().await.map_err(unavailable)?)
        } else {
            let client = redis::Client::open(urls.trim()).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Connection::Single(
                ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?,
            )
        };
        Ok(RedisStore {
            connection,
            enqueue_events: Script::new(ENQUEUE_EVENTS),
            commit_book: Script::new(COMMIT_BOOK),
            route_event: Script::new(ROUTE_EVENT),
            claim_customer: Script::new(CLAIM_CUSTOMER),
            expire_parked: Script::new(EXPIRE_PARKED),
            unlock_book: Script::new(UNLOCK_BOOK),
            window_secs: window.as_secs(),
            click_scripts: ClickScripts {
                records: Script::new(RECORD_CLICKS),
                last_clicks: Script::new(LAST_CLICKS),
                counts: Script::new(COUNT_CLICKS),
            },
            insert_partner: Script::new(INSERT_PARTNER),
            update_partner: Script::new(UPDATE_PARTNER),
            insert_campaign: Script::new(INSERT_CAMPAIGN),
            insert_coupon: Script::new(INSERT_COUPON),
            webhook_scripts: WebhookScripts {
                gather: Script::new(GATHER_OUTBOX),
                drop: Script::new(DROP_OUTBOX),
                unmark: Script::new(UNMARK_OUTBOX),
                insert: Script::new(INSERT_WEBHOOK),
                save: Script::new(SAVE_DELIVERY),
                lease: Script::new(LEASE),
            },
        })
    }

    /// Reads Redis's own settings for what they risk: an evicting
    /// `maxmemory-policy` silently deletes ledgers and event ids, so it is
    /// refused (`Err`); no persistence loses everything on a Redis
    /// restart, which is a warning. A Redis that does not answer `CONFIG
    /// GET` (managed services disable it, or it is down now) is a warning
    /// that nothing could be checked.
    pub async fn check_settings(&self) -> Result<Vec<String>, String> {
        let read = |name: &'static str| async move {
            let pairs: HashMap<String, String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut self.conn())
                .await?;
            Ok::<_, redis::RedisError>(pairs.get(name).cloned().unwrap_or_default())
        };
        let settings = async {
            Ok::<_, redis::RedisError>((
                read("maxmemory-policy").await?,
                read("appendonly").await?,
                read("appendfsync").await?,
                read("save").await?,
            ))
        };
        let (policy, appendonly, appendfsync, save) = match settings.await {
            Ok(settings) => settings,
            Err(e) => {
                return Ok(vec![format!(
                    "Redis's settings could not be checked (CONFIG GET: {e}): it must run with \
                     maxmemory-policy noeviction and appendonly yes"
                )])
            }
        };
        if policy != "noeviction" {
            return Err(format!(
                "Redis's maxmemory-policy is `{policy}`: an evicting Redis silently deletes \
                 ledgers and event ids; set it to noeviction"
            ));
        }
        let mut warnings = Vec::new();
        if appendonly != "yes" {
            warnings.push(if save.trim().is_empty() {
                "Redis runs with appendonly no and no RDB snapshots: a Redis restart loses \
                 every partner, event and ledger"
                    .to_owned()
            } else {
                format!(
                    "Redis runs with appendonly no: a Redis restart loses what changed since \
                     its last RDB snapshot (save {save})"
                )
            });
        } else if appendfsync != "always" {
            warnings.push(format!(
                "Redis runs with appendfsync {appendfsync}: a power loss can lose about the \
                 last second of writes, events answered 202 included"
            ));
        }
        Ok(warnings)
    }

    fn conn(&self) -> Connection {
        self.connection.clone()
    }

    /// Runs one command whose answer is not needed.
    async fn exec(&self, cmd: &Cmd) -> Result<(), StoreError> {
        cmd.query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// The partner an owners hash (`lc:{payouts}:owners`,
    /// `lc:{holds}:owners`) names for `field`.
    async fn owner_in(&self, hash: &str, field: &str) -> Result<Option<PartnerId>, StoreError> {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(hash)
            .arg(field)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        owner.map(|p| partner_of_key(&p)).transpose()
    }

    /// Up to `limit` members of a sorted set of score 0 after `after`, in
    /// lexical order (`ZRANGE … BYLEX`): the admin lists' pages.
    async fn lex_page(
        &self,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(after.map_or("-".to_owned(), |a| format!("({a}")))
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    /// The JSON records of a hash's `fields` that exist, in the order
    /// given.
    async fn json_fields<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<T>, StoreError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(key)
            .arg(fields)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.iter().flatten().map(|r| decode(r)).collect()
    }

    /// Runs a script that answers 1 (done) or 0 (refused).
    async fn script_flag(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<bool, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let done: i64 = invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    /// The pipelines that write `clicks`: per click a `SET` of its record,
    /// and its share of two scripts, one keeping visitors' last clicks and
    /// one counting (see `docs/redis-keys.md`).
    fn click_pipelines(&self, clicks: &[Click]) -> Vec<Pipeline> {
        let mut batch = ClickBatch::new(&self.connection, clicks.len());
        let mut buf = ClickBuffers::default();
        // A click given twice in one batch is one click: a batch's counts
        // are summed per cell and applied once (marked by a digest of its
        // ids), so a second copy would be summed in too.
        let mut seen: HashSet<ClickId, IdHashing> =
            HashSet::with_capacity_and_hasher(clicks.len(), IdHashing::default());
        for click in clicks.iter().filter(|c| seen.insert(c.click_id)) {
            buf.fill(click, self.window_secs);
            let b = &buf;
            batch
                .group(&b.click_key)
                .records
                .key(&b.click_key)
                .arg(&b.record)
                .arg(b.expires.as_bytes());
            batch
                .group(&b.visitor_key)
                .last_clicks
                .key(&b.visitor_key)
                .arg(b.at.as_bytes())
                .arg(b.click_id.as_bytes())
                .arg(b.expires.as_bytes());
            batch.group(&b.counters_key).count(click, b);
        }
        batch.into_pipelines(&self.click_scripts)
    }

    /// Sends the pipelines, at once when there are several (cluster slots).
    async fn run_pipelines(&self, pipelines: &[Pipeline]) -> Result<(), redis::RedisError> {
        let runs = pipelines.iter().map(|pipeline| {
            let mut conn = self.conn();
            async move { pipeline.query_async::<()>(&mut conn).await }
        });
        for result in futures_util::future::join_all(runs).await {
            result?;
        }
        Ok(())
    }

    /// Loads the click scripts into the script cache of every node (after a
    /// restart the cache is empty and `EVALSHA` answers NOSCRIPT).
    async fn load_click_scripts(&self) -> Result<(), redis::RedisError> {
        let scripts = &self.click_scripts;
        for script in [&scripts.records, &scripts.last_clicks, &scripts.counts] {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(script_source(script));
            match &self.connection {
                Connection::Single(_) => load
                    .query_async::<String>(&mut self.conn())
                    .await
                    .map(drop)?,
                Connection::Cluster(_) => {
                    let routing = redis::cluster_routing::RoutingInfo::MultiNode((
                        redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                        Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                    ));
                    let Connection::Cluster(cluster) = &self.connection else {
                        unreachable!("matched as a cluster above")
                    };
                    cluster
                        .clone()
                        .route_command(load, routing)
                        .await
                        .map(drop)?
                }
            }
        }
        Ok(())
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    ) || error_code(e) == Some("NOSCRIPT")
}
#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
            .map_err(unavailable)
    }
}
