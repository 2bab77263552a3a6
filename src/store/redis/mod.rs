//! The Redis store: a single node or a Redis Cluster, keys hash-tagged so
//! that every multi-key operation stays on one slot (`docs/redis-keys.md`).
//!
//! - `keys`: the key names
//! - `scripts`: the Lua scripts (`scripts/*.lua`)
//! - `click_batch`: how a batch of clicks becomes one pipeline per slot
//! - here: the connection, and the `Store` methods

mod click_batch;
mod keys;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde::Serialize;

use super::record::{decode_record, encode_record};
use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, Commit, CounterCell, Delivery, Enqueued,
    InboxItem, ParkedEvent, Partner, QueueStats, Route, Store, StoreError, Taken, Unreadable,
    UNREADABLE_KEPT,
};
use crate::conversions::book::{
    parse_conversion_cell, BookRequest, BookView, Changes, History, HistoryChange, LedgerEntry,
};
use crate::conversions::customer::{ConversionCounts, Customer, Referral};
use crate::conversions::events::Event;
use crate::ids::PartnerId;
use crate::ids::{ClickId, IdHashing, VisitorId};

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
    /// A batch of 2,000 events holds a few hundred customers, and a signup
    /// (or a customer this worker has not seen) is a round trip: 64 in
    /// flight instead of 16 applied two workers' mixed stream at 46,000 to
    /// 52,000 events a second instead of 38,000 to 50,000 (`loadtest/events`,
    /// two alternating runs), one worker's about the same. (Embedded, 64
    /// was slower: the calls queue for the one writer connection.)
    fn routing_concurrency(&self) -> usize {
        64
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn catalog_version(&self) -> Result<u64, StoreError> {
        redis::cmd("GET")
            .arg(keys::VERSION)
            .query_async::<Option<u64>>(&mut self.conn())
            .await
            .map(Option::unwrap_or_default)
            .map_err(unavailable)
    }

    async fn load_catalog(&self) -> Result<CatalogSnapshot, StoreError> {
        // One slot, read in one transaction: partners and version agree.
        let (version, partners): (Option<u64>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .get(keys::VERSION)
            .hgetall(keys::PARTNERS)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let partners: Vec<Partner> = partners
            .values()
            .map(|raw| decode(raw))
            .collect::<Result<_, _>>()?;
        let mut pipe = redis::pipe();
        for partner in &partners {
            pipe.hgetall(keys::owned(|k| keys::campaigns(k, partner.id.as_str())));
        }
        let campaign_maps: Vec<HashMap<String, String>> = if partners.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn())
                .await
                .map_err(unavailable)?
        };
        let mut campaigns = Vec::new();
        for map in campaign_maps {
            for raw in map.values() {
                campaigns.push(decode::<Campaign>(raw)?);
            }
        }
        Ok(CatalogSnapshot {
            version: version.unwrap_or_default(),
            partners,
            campaigns,
        })
    }

    async fn insert_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let inserted = self
            .script_flag(
                &self.insert_partner,
                &[keys::PARTNERS, keys::TOKENS, keys::VERSION],
                &[partner.id.as_str(), &encode(partner), &partner.token_hash],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn update_partner(&self, partner: &Partner) -> Result<(), StoreError> {
        let updated = self
            .script_flag(
                &self.update_partner,
                &[keys::PARTNERS, keys::VERSION],
                &[partner.id.as_str(), &encode(partner)],
            )
            .await?;
        updated.then_some(()).ok_or(StoreError::NotFound)
    }

    async fn partner(&self, id: &PartnerId) -> Result<Option<Partner>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::PARTNERS)
            .arg(id.as_str())
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.map(|r| decode(&r)).transpose()
    }

    async fn partner_by_token_hash(&self, hash: &str) -> Result<Option<PartnerId>, StoreError> {
        let raw: Option<String> = redis::cmd("HGET")
            .arg(keys::TOKENS)
            .arg(hash)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|id| PartnerId::parse(&id).ok()))
    }

    async fn insert_campaign(&self, campaign: &Campaign) -> Result<(), StoreError> {
        let inserted = self
            .script_flag(
                &self.insert_campaign,
                &[
                    &keys::owned(|k| keys::campaigns(k, campaign.partner.as_str())),
                    keys::VERSION,
                ],
                &[campaign.slug.as_str(), &encode(campaign)],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::owned(|k| keys::campaigns(k, partner.as_str())))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut campaigns: Vec<Campaign> = map
            .values()
            .map(|raw| decode(raw))
            .collect::<Result<_, _>>()?;
        campaigns.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(campaigns)
    }

    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError> {
        if clicks.is_empty() {
            return Ok(());
        }
        let pipelines = self.click_pipelines(clicks);
        match self.run_pipelines(&pipelines).await {
            Err(e) if is_noscript(&e) => {
                // Every step is idempotent, so the batch is simply sent again.
                self.load_click_scripts().await.map_err(unavailable)?;
                self.run_pipelines(&pipelines).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::click(k, id)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|r| {
            serde_json::from_str::<ClickRecord>(&r)
                .ok()
                .and_then(ClickRecord::into_click)
        }))
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        let latest: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::visitor(k, visitor)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        // `time:click id`; the click record lives exactly as long.
        let click_id = latest
            .as_deref()
            .and_then(|l| l.split_once(':'))
            .and_then(|(_, id)| ClickId::parse(id));
        match click_id {
            Some(id) => self.click(&id).await,
            None => Ok(None),
        }
    }

    async fn click_counts(
        &self,
        partner: &PartnerId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<ClickCount>, StoreError> {
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.hgetall(keys::owned(|k| {
                keys::day_clicks(k, partner.as_str(), &day.to_string())
            }));
        }
        let maps: Vec<HashMap<String, u64>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut counts = Vec::new();
        for (day, map) in days.iter().zip(maps) {
            for (field, clicks) in map {
                let (campaign, term) = field.split_once('\t').unwrap_or((&field, ""));
                counts.push(ClickCount {
                    cell: CounterCell {
                        day: *day,
                        campaign: campaign.to_owned(),
                        term: term.to_owned(),
                    },
                    clicks,
                });
            }
        }
        Ok(counts)
    }

    async fn unique_visitors(
        &self,
        partner: &PartnerId,
        cells: &[CounterCell],
    ) -> Result<u64, StoreError> {
        if cells.is_empty() {
            return Ok(0);
        }
        let mut pfcount = redis::cmd("PFCOUNT");
        let (mut field, mut key) = (String::new(), String::new());
        for cell in cells {
            keys::field(&mut field, &cell.campaign, &cell.term);
            keys::day_visitors(&mut key, partner.as_str(), &cell.day.to_string(), &field);
            pfcount.arg(&key);
        }
        pfcount
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

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

    async fn dead_letter(&self, entries: &[Unreadable], now_ms: i64) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // One slot ({events}): kept, acknowledged and deleted at once.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in entries {
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

    async fn event_queue_stats(&self) -> Result<QueueStats, StoreError> {
        let mut stats = self.stream_stats().await?;
        let ready: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::READY)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        for partner in ready {
            let waiting: u64 = redis::cmd("LLEN")
                .arg(keys::owned(|k| keys::book(k, &partner, "inbox")))
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            stats.routed += waiting;
        }
        Ok(stats)
    }

    async fn route_event(&self, event: &Event, now_ms: i64) -> Result<Route, StoreError> {
        let customer = event.customer.as_str();
        // Most events find their customer claimed (its signup came first):
        // one read routes them. A claim never changes once made, so what
        // this read finds holds. (Another worker's first event of a
        // customer this worker never saw lands here: with two workers,
        // about one event a customer.)
        let claim: Option<String> = redis::cmd("GET")
            .arg(keys::owned(|k| keys::claim(k, customer)))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if let Some(claim) = claim {
            return Ok(Route::Claimed(decode(&claim)?));
        }
        let member = format!("{customer}\t{}", event.id);
        // Indexed before it is parked: a claimant that takes the event
        // right after removes the entry, and none is left behind. Should
        // the event not be parked after all, the entry goes again.
        self.exec(
            redis::cmd("ZADD")
                .arg(keys::PARKED)
                .arg("NX")
                .arg(now_ms)
                .arg(&member),
        )
        .await?;
        let record = encode(&ParkedEvent {
            event: event.clone(),
            parked_at: now_ms,
        });
        let claim: String = self
            .route_event
            .key(keys::owned(|k| keys::claim(k, customer)))
            .key(keys::owned(|k| keys::customer(k, customer, "parked")))
            .arg(record)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if claim.is_empty() {
            return Ok(Route::Parked);
        }
        self.exec(redis::cmd("ZREM").arg(keys::PARKED).arg(&member))
            .await?;
        Ok(Route::Claimed(decode(&claim)?))
    }

    async fn claim_customer(
        &self,
        customer: &str,
        referral: Option<&Referral>,
    ) -> Result<(Option<Referral>, Vec<Event>), StoreError> {
        let (claim, parked): (String, Vec<String>) = self
            .claim_customer
            .key(keys::owned(|k| keys::claim(k, customer)))
            .key(keys::owned(|k| keys::customer(k, customer, "parked")))
            .arg(encode(&referral))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let parked = parked
            .iter()
            .map(|raw| decode::<ParkedEvent>(raw).map(|p| p.event))
            .collect::<Result<_, _>>()?;
        Ok((decode(&claim)?, parked))
    }

    async fn unpark(&self, customer: &str, parked: &[Event]) -> Result<(), StoreError> {
        self.exec(redis::cmd("DEL").arg(keys::owned(|k| keys::customer(k, customer, "parked"))))
            .await?;
        if parked.is_empty() {
            return Ok(());
        }
        let mut remove = redis::cmd("ZREM");
        remove.arg(keys::PARKED);
        for event in parked {
            remove.arg(format!("{customer}\t{}", event.id));
        }
        self.exec(&remove).await
    }

    async fn expire_parked(&self, before_ms: i64) -> Result<usize, StoreError> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::PARKED)
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(1000)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut moved = 0;
        let customers: std::collections::BTreeSet<&str> = members
            .iter()
            .filter_map(|m| m.split_once('\t').map(|(c, _)| c))
            .collect();
        let mut claimed = std::collections::BTreeSet::new();
        for customer in customers {
            let n: i64 = self
                .expire_parked
                .key(keys::owned(|k| keys::claim(k, customer)))
                .key(keys::owned(|k| keys::customer(k, customer, "parked")))
                .key(keys::owned(|k| keys::customer(k, customer, "dead")))
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if n < 0 {
                claimed.insert(customer);
                continue;
            }
            moved += n as usize;
            if n > 0 {
                self.exec(
                    redis::cmd("ZADD")
                        .arg(keys::DEAD)
                        .arg(before_ms)
                        .arg(customer),
                )
                .await?;
            }
        }
        // A claimed customer's entries stay until its claimant forgets them.
        let gone: Vec<&String> = members
            .iter()
            .filter(|m| !m.split_once('\t').is_some_and(|(c, _)| claimed.contains(c)))
            .collect();
        if !gone.is_empty() {
            self.exec(redis::cmd("ZREM").arg(keys::PARKED).arg(&gone))
                .await?;
        }
        Ok(moved)
    }

    async fn parked_events(
        &self,
        dead: bool,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let index = if dead { keys::DEAD } else { keys::PARKED };
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut customers: Vec<&str> = members
            .iter()
            .map(|m| m.split_once('\t').map_or(m.as_str(), |(c, _)| c))
            .collect();
        customers.dedup();
        let part = if dead { "dead" } else { "parked" };
        let mut events = Vec::new();
        for customer in customers {
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(keys::owned(|k| keys::customer(k, customer, part)))
                .arg(0)
                .arg(limit)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            for record in raw {
                events.push(decode::<ParkedEvent>(&record)?);
            }
        }
        events.sort_by(|a, b| (a.parked_at, &a.event.id).cmp(&(b.parked_at, &b.event.id)));
        events.dedup_by(|a, b| a.event.id == b.event.id);
        events.truncate(limit);
        Ok(events)
    }

    async fn parked_count(&self) -> Result<u64, StoreError> {
        redis::cmd("ZCARD")
            .arg(keys::PARKED)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn load_book(
        &self,
        partner: &str,
        request: &BookRequest,
    ) -> Result<BookView, StoreError> {
        let key = |part: &str| keys::owned(|k| keys::book(k, partner, part));
        // HMGET and SMISMEMBER need at least one field: "" names nothing.
        let or_nothing = |set: &std::collections::BTreeSet<String>| -> Vec<String> {
            if set.is_empty() {
                vec![String::new()]
            } else {
                set.iter().cloned().collect()
            }
        };
        let customers = or_nothing(&request.customers);
        let cells = or_nothing(&request.cells);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .get(key("version"))
            .get(key("book"))
            .cmd("HMGET")
            .arg(key("customers"))
            .arg(&customers)
            .cmd("HMGET")
            .arg(key("conversions"))
            .arg(&cells);
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
        type Loaded = (
            Option<u64>,
            Option<Vec<u8>>,
            Vec<Option<Vec<u8>>>,
            Vec<Option<Vec<u8>>>,
            Value,
        );
        let (version, book, customer_rows, cell_rows, history): Loaded = pipe
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
        for (id, raw) in customers.iter().zip(customer_rows) {
            if let Some(raw) = raw {
                view.customers
                    .insert(id.clone(), decode_record::<Customer>(&raw)?);
            }
        }
        for (cell, raw) in cells.iter().zip(cell_rows) {
            if let Some(raw) = raw {
                view.cells
                    .insert(cell.clone(), decode_record::<ConversionCounts>(&raw)?);
            }
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

    async fn push_inbox(&self, partner: &str, items: &[InboxItem]) -> Result<(), StoreError> {
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

    async fn ready_partners(&self, max: usize) -> Result<Vec<String>, StoreError> {
        redis::cmd("SRANDMEMBER")
            .arg(keys::READY)
            .arg(max)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn read_inbox(&self, partner: &str, max: usize) -> Result<Vec<InboxItem>, StoreError> {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(keys::owned(|k| keys::book(k, partner, "inbox")))
            .arg(0)
            .arg(max.saturating_sub(1))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        raw.iter().map(|r| decode(r)).collect()
    }

    async fn settle_ready(&self, partner: &str) -> Result<(), StoreError> {
        let inbox = keys::owned(|k| keys::book(k, partner, "inbox"));
        let waiting: u64 = redis::cmd("LLEN")
            .arg(&inbox)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if waiting > 0 {
            return self
                .exec(redis::cmd("SADD").arg(keys::READY).arg(partner))
                .await;
        }
        self.exec(redis::cmd("SREM").arg(keys::READY).arg(partner))
            .await?;
        // A push may have landed between the two: look again.
        let waiting: u64 = redis::cmd("LLEN")
            .arg(&inbox)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if waiting > 0 {
            self.exec(redis::cmd("SADD").arg(keys::READY).arg(partner))
                .await?;
        }
        Ok(())
    }

    async fn lock_book(
        &self,
        partner: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
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

    async fn unlock_book(&self, partner: &str, holder: &str) -> Result<(), StoreError> {
        self.unlock_book
            .key(keys::owned(|k| keys::book(k, partner, "lock")))
            .arg(holder)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn commit_book(
        &self,
        partner: &str,
        version: u64,
        changes: &Changes,
    ) -> Result<Commit, StoreError> {
        let mut invocation = self.commit_book.prepare_invoke();
        for part in [
            "version",
            "book",
            "customers",
            "conversions",
            "history",
            "ledger",
            "inbox",
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
            invocation.arg(cell).arg(encode_record(counts));
        }
        invocation.arg(changes.history.len());
        for change in &changes.history {
            match change {
                HistoryChange::Add(member, at) => invocation.arg("+").arg(*at).arg(member),
                HistoryChange::Remove(member, _) => invocation.arg("-").arg(member),
            };
        }
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
        partner: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, ConversionCounts)>, StoreError> {
        let cells: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(keys::owned(|k| keys::book(k, partner, "conversions")))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let mut counts = Vec::new();
        for (cell, raw) in cells {
            let in_range =
                parse_conversion_cell(&cell).is_some_and(|(day, ..)| day >= from && day <= to);
            if in_range {
                counts.push((cell, decode_record(&raw)?));
            }
        }
        Ok(counts)
    }

    async fn ledger(
        &self,
        partner: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let key = keys::owned(|k| keys::book(k, partner, "ledger"));
        // Entry `seq` sits at index seq - 1: the list only grows, in order.
        let len: u64 = redis::cmd("LLEN")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
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
