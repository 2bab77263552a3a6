//! The Redis store: a single node or a Redis Cluster, keys hash-tagged so
//! that every multi-key operation stays on one slot (`docs/redis-keys.md`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};

use super::{
    Campaign, CatalogSnapshot, Click, ClickCount, CounterCell, Partner, Store, StoreError,
};
use crate::cookie::{ClickId, VisitorId};
use crate::ids::PartnerId;

/// How long a command may wait for its answer: a store that does not answer
/// in time counts as down, and callers retry later.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the "click already counted" marker lives: long enough to cover
/// any retry of a batch, short enough to cost one day of keys.
const SEEN_TTL_SECS: u64 = 86_400;

/// Counts a click once: the marker makes a retried batch harmless.
/// KEYS: seen marker, day counter hash, visitors HyperLogLog.
/// ARGV: counter field, visitor id, marker TTL, counters' expiry (unix s).
const COUNT_CLICK: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  redis.call('EXPIREAT', KEYS[2], ARGV[4])
  redis.call('PFADD', KEYS[3], ARGV[2])
  redis.call('EXPIREAT', KEYS[3], ARGV[4])
  return 1
end
return 0";

/// Keeps a visitor's latest click, whatever order clicks are written in.
/// KEYS: visitor hash. ARGV: click time, click record, expiry (unix s).
const LAST_CLICK: &str = r"
local at = redis.call('HGET', KEYS[1], 'at')
if (not at) or tonumber(at) <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'at', ARGV[1], 'click', ARGV[2])
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return 1";

/// KEYS: partners, tokens, version. ARGV: id, record, token hash.
const INSERT_PARTNER: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('INCR', KEYS[3])
return 1";

/// KEYS: partners, version. ARGV: id, record.
const UPDATE_PARTNER: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1";

/// KEYS: the partner's campaigns, version. ARGV: slug, record.
const INSERT_CAMPAIGN: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1";

/// Key names; see `docs/redis-keys.md`.
mod keys {
    use chrono::NaiveDate;

    use crate::cookie::{ClickId, VisitorId};

    pub const VERSION: &str = "lc:{catalog}:version";
    pub const PARTNERS: &str = "lc:{catalog}:partners";
    pub const TOKENS: &str = "lc:{catalog}:tokens";

    pub fn campaigns(partner: &str) -> String {
        format!("lc:{{catalog}}:campaigns:{partner}")
    }

    /// Click and visitor keys are spread over 256 tags, so a batch in a
    /// cluster needs at most 256 pipelines per kind, not one per click.
    pub fn click(id: &ClickId) -> String {
        format!("lc:{{c{:02x}}}:click:{id}", id.0[0])
    }

    pub fn visitor(id: &VisitorId) -> String {
        format!("lc:{{v{:02x}}}:visitor:{id}", id.0[0])
    }

    pub fn seen(partner: &str, click: &ClickId) -> String {
        format!("lc:{{p:{partner}}}:seen:{click}")
    }

    pub fn day_clicks(partner: &str, day: NaiveDate) -> String {
        format!("lc:{{p:{partner}}}:clicks:{day}")
    }

    pub fn day_visitors(partner: &str, day: NaiveDate, field: &str) -> String {
        format!("lc:{{p:{partner}}}:uv:{day}:{field}")
    }

    /// The counter field of a campaign and term. Names and terms never hold
    /// control characters, so a tab separates them unambiguously.
    pub fn field(campaign: &str, term: &str) -> String {
        format!("{campaign}\t{term}")
    }
}

/// A click as stored: compact JSON.
#[derive(Serialize, Deserialize)]
struct ClickRecord {
    c: String,
    v: String,
    p: String,
    m: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    a: i64,
}

impl ClickRecord {
    fn from_click(click: &Click) -> Self {
        ClickRecord {
            c: click.click_id.to_string(),
            v: click.visitor_id.to_string(),
            p: click.partner.to_string(),
            m: click.campaign.to_string(),
            t: click.term.as_deref().map(str::to_owned),
            a: click.at,
        }
    }

    fn into_click(self) -> Option<Click> {
        Some(Click {
            click_id: ClickId::parse(&self.c)?,
            visitor_id: VisitorId::parse(&self.v)?,
            partner: self.p.into(),
            campaign: self.m.into(),
            term: self.t.map(Into::into),
            at: self.a,
        })
    }
}

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

/// Commands to send together, each under the hash tag of its keys: one
/// pipeline on a single node, one pipeline per tag on a cluster (a cluster
/// pipeline must stay on one slot).
#[derive(Default)]
struct Batch {
    by_tag: HashMap<String, Pipeline>,
}

impl Batch {
    fn add(&mut self, key: &str, cmd: Cmd) {
        let tag = hash_tag(key).to_owned();
        self.by_tag
            .entry(tag)
            .or_default()
            .add_command(cmd)
            .ignore();
    }
}

/// The part of `key` Redis Cluster hashes: the first `{…}`, else all of it.
fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

pub struct RedisStore {
    connection: Connection,
    window_secs: u64,
    count_click: Script,
    last_click: Script,
    insert_partner: Script,
    update_partner: Script,
    insert_campaign: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Unavailable(format!("corrupt record: {e}")))
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
            window_secs: window.as_secs(),
            count_click: Script::new(COUNT_CLICK),
            last_click: Script::new(LAST_CLICK),
            insert_partner: Script::new(INSERT_PARTNER),
            update_partner: Script::new(UPDATE_PARTNER),
            insert_campaign: Script::new(INSERT_CAMPAIGN),
        })
    }

    /// Runs a command that answers one stored click record, or nothing.
    async fn read_click(&self, cmd: Cmd) -> Result<Option<Click>, StoreError> {
        let raw: Option<String> = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(raw
            .and_then(|r| decode::<ClickRecord>(&r).ok())
            .and_then(ClickRecord::into_click))
    }

    fn conn(&self) -> Connection {
        self.connection.clone()
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

    /// `EVALSHA` of `script` as a command for a pipeline.
    fn evalsha(script: &Script, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }

    async fn run_batch(&self, batch: &Batch) -> Result<(), redis::RedisError> {
        match &self.connection {
            Connection::Single(_) => {
                let mut all =
                    Pipeline::with_capacity(batch.by_tag.values().map(Pipeline::len).sum());
                for pipeline in batch.by_tag.values() {
                    for cmd in pipeline.cmd_iter() {
                        all.add_command(cmd.clone()).ignore();
                    }
                }
                all.query_async::<()>(&mut self.conn()).await
            }
            Connection::Cluster(_) => {
                let runs = batch.by_tag.values().map(|pipeline| {
                    let mut conn = self.conn();
                    async move { pipeline.query_async::<()>(&mut conn).await }
                });
                for result in futures_util::future::join_all(runs).await {
                    result?;
                }
                Ok(())
            }
        }
    }

    /// Loads the click scripts into the script cache of every node (after a
    /// restart the cache is empty and `EVALSHA` answers NOSCRIPT).
    async fn load_click_scripts(&self) -> Result<(), redis::RedisError> {
        for script in [&self.count_click, &self.last_click] {
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
    ) || e.to_string().contains("NOSCRIPT")
}

fn script_source(script: &Script) -> &'static str {
    // Scripts are compared by hash, so the source is found by hash too.
    [COUNT_CLICK, LAST_CLICK]
        .into_iter()
        .find(|source| Script::new(source).get_hash() == script.get_hash())
        .expect("only the click scripts are pipelined")
}

/// Unix time at which a day's counters expire: the window after the day ends.
fn day_expiry(day: NaiveDate, window_secs: u64) -> i64 {
    let next = day.checked_add_days(Days::new(1)).unwrap_or(day);
    next.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp()
        + window_secs as i64
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
            pipe.hgetall(keys::campaigns(partner.id.as_str()));
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
                &[&keys::campaigns(campaign.partner.as_str()), keys::VERSION],
                &[campaign.slug.as_str(), &encode(campaign)],
            )
            .await?;
        inserted.then_some(()).ok_or(StoreError::Conflict)
    }

    async fn campaigns(&self, partner: &PartnerId) -> Result<Vec<Campaign>, StoreError> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys::campaigns(partner.as_str()))
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

    /// Three commands per click, pipelined: the click record, the visitor's
    /// last click, and the counters (counted once per click id).
    async fn record_clicks(&self, clicks: &[Click]) -> Result<(), StoreError> {
        if clicks.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        let seen_ttl = SEEN_TTL_SECS.to_string();
        for click in clicks {
            let record = encode(&ClickRecord::from_click(click));
            let expires = (click.at + self.window_secs as i64).to_string();
            let click_key = keys::click(&click.click_id);
            let mut set = redis::cmd("SET");
            set.arg(&click_key).arg(&record).arg("EXAT").arg(&expires);
            batch.add(&click_key, set);

            let visitor_key = keys::visitor(&click.visitor_id);
            let at = click.at.to_string();
            batch.add(
                &visitor_key,
                Self::evalsha(
                    &self.last_click,
                    &[&visitor_key],
                    &[at.as_bytes(), record.as_bytes(), expires.as_bytes()],
                ),
            );

            let day = click.day();
            let field = keys::field(&click.campaign, click.term.as_deref().unwrap_or(""));
            let seen = keys::seen(&click.partner, &click.click_id);
            let counters = keys::day_clicks(&click.partner, day);
            let visitors = keys::day_visitors(&click.partner, day, &field);
            let counters_expire = day_expiry(day, self.window_secs).to_string();
            batch.add(
                &seen,
                Self::evalsha(
                    &self.count_click,
                    &[&seen, &counters, &visitors],
                    &[
                        field.as_bytes(),
                        &click.visitor_id.0,
                        seen_ttl.as_bytes(),
                        counters_expire.as_bytes(),
                    ],
                ),
            );
        }
        match self.run_batch(&batch).await {
            Err(e) if is_noscript(&e) => {
                // Every step is idempotent, so the batch is simply sent again.
                self.load_click_scripts().await.map_err(unavailable)?;
                self.run_batch(&batch).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    async fn click(&self, id: &ClickId) -> Result<Option<Click>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(keys::click(id));
        self.read_click(get).await
    }

    async fn last_click(&self, visitor: &VisitorId) -> Result<Option<Click>, StoreError> {
        let mut hget = redis::cmd("HGET");
        hget.arg(keys::visitor(visitor)).arg("click");
        self.read_click(hget).await
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
            pipe.hgetall(keys::day_clicks(partner.as_str(), *day));
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
        for cell in cells {
            pfcount.arg(keys::day_visitors(
                partner.as_str(),
                cell.day,
                &keys::field(&cell.campaign, &cell.term),
            ));
        }
        pfcount
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("lc:{p:acme}:clicks:2026-11-01"), "p:acme");
        assert_eq!(hash_tag("lc:{catalog}:version"), "catalog");
        assert_eq!(hash_tag("plain"), "plain");
        assert_eq!(hash_tag("a{}b"), "a{}b");
    }

    #[test]
    fn a_days_counters_live_for_the_window_after_the_day() {
        let day: NaiveDate = "2026-11-01".parse().unwrap();
        assert_eq!(day_expiry(day, 10), 1_793_577_600 + 10);
    }
}
