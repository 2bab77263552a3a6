//! The Redis store: a single node or a Redis Cluster, keys hash-tagged so
//! that every multi-key operation stays on one slot (`docs/redis-keys.md`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Cmd, Pipeline, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// How long a command may wait for its answer: a store that does not answer
/// in time counts as down, and callers retry later.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Counts the clicks of one batch (on one slot) once, however often the
/// batch is sent: the batch marker, named by a digest of the click ids and
/// kept a day (longer than any retry), makes a resent batch a no-op.
/// Increments are summed per counter before they are applied.
/// KEYS: the batch marker, then two per click: day counter hash, visitors
/// HyperLogLog. ARGV, three per click: counter field, visitor id, counters'
/// expiry (unix s).
const COUNT_CLICKS: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local increments, members, expiry = {}, {}, {}
for i = 0, (#KEYS - 1) / 2 - 1 do
  local counters, visitors = KEYS[2 * i + 2], KEYS[2 * i + 3]
  local field = ARGV[3 * i + 1]
  increments[counters] = increments[counters] or {}
  increments[counters][field] = (increments[counters][field] or 0) + 1
  members[visitors] = members[visitors] or {}
  table.insert(members[visitors], ARGV[3 * i + 2])
  expiry[counters] = ARGV[3 * i + 3]
  expiry[visitors] = ARGV[3 * i + 3]
end
for counters, fields in pairs(increments) do
  for field, n in pairs(fields) do redis.call('HINCRBY', counters, field, n) end
end
for visitors, list in pairs(members) do
  for first = 1, #list, 500 do
    redis.call('PFADD', visitors, unpack(list, first, math.min(first + 499, #list)))
  end
end
for key, at in pairs(expiry) do redis.call('EXPIREAT', key, at) end
return 1";

/// Stores click records. KEYS: click keys. ARGV, two per key: the record,
/// its expiry (unix s).
const RECORD_CLICKS: &str = r"
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EXAT', ARGV[2 * i])
end
return 1";

/// Keeps each visitor's latest click as `time:click id`, whatever order
/// clicks are written in. KEYS: visitor keys. ARGV, three per key: click
/// time, click id, expiry (unix s).
const LAST_CLICKS: &str = r"
for i = 1, #KEYS do
  local at = ARGV[3 * i - 2]
  local stored = redis.call('GET', KEYS[i])
  if (not stored) or tonumber(string.match(stored, '^%d+')) <= tonumber(at) then
    redis.call('SET', KEYS[i], at .. ':' .. ARGV[3 * i - 1], 'EXAT', ARGV[3 * i])
  end
end
return 1";

/// Queues events whose id was never seen. KEYS: the id set, the stream.
/// ARGV, two per event: id, event JSON.
const ENQUEUE_EVENTS: &str = r"
local accepted = 0
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'e', ARGV[i + 1])
    accepted = accepted + 1
  end
end
return accepted";

/// Applies a batch's (or payout's) changes to a partner's book, if the
/// book is still at the version read.
/// KEYS: version, book, customers, conversions, history, ledger, inbox.
/// ARGV: expected version, events taken off the inbox, book JSON, then
/// counted groups: customers (id, JSON), cells (cell, JSON), history
/// changes in order (`+` score member, or `-` member); then the ledger
/// entries.
/// Answers 1 applied, -1 the book moved.
///
/// Each group is written with as few commands as its size allows (an
/// `HSET` of many fields, a `ZADD` of a run of additions): a command
/// called from Lua costs Redis a lookup and a client round of its own,
/// and one command per record was most of Redis's time in the worker.
const COMMIT_BOOK: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return -1 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[7], ARGV[2], -1) end
redis.call('SET', KEYS[2], ARGV[3])
-- `command key ARGV[from..to]`, in calls of at most 1000 arguments (even,
-- so that pairs stay whole; Lua's stack holds a few thousand).
local function batched(command, key, from, to)
  while from <= to do
    local last = math.min(to, from + 999)
    redis.call(command, key, unpack(ARGV, from, last))
    from = last + 1
  end
end
local i = 4
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  local n = tonumber(ARGV[i]); i = i + 1
  batched('HSET', key, i, i + 2 * n - 1); i = i + 2 * n
end
local changes = tonumber(ARGV[i]); i = i + 1
local adds, removes = {}, {}
local function flush()
  if #adds > 0 then redis.call('ZADD', KEYS[5], unpack(adds)); adds = {} end
  if #removes > 0 then redis.call('ZREM', KEYS[5], unpack(removes)); removes = {} end
end
for _ = 1, changes do
  if ARGV[i] == '+' then
    if #removes > 0 or #adds >= 1000 then flush() end
    adds[#adds + 1] = ARGV[i + 1]; adds[#adds + 1] = ARGV[i + 2]; i = i + 3
  else
    if #adds > 0 or #removes >= 1000 then flush() end
    removes[#removes + 1] = ARGV[i + 1]; i = i + 2
  end
end
flush()
batched('RPUSH', KEYS[6], i, #ARGV)
redis.call('INCR', KEYS[1])
return 1";

/// Routes a customer's event: the claim if there is one, else the event is
/// parked with the customer. KEYS: claim, parked. ARGV: the parked record.
/// Answers the claim, or '' when parked.
const ROUTE_EVENT: &str = r"
local claim = redis.call('GET', KEYS[1])
if claim then return claim end
redis.call('RPUSH', KEYS[2], ARGV[1])
return ''";

/// Claims a customer unless claimed; answers the claim that holds and the
/// parked records. KEYS: claim, parked. ARGV: the claim JSON.
const CLAIM_CUSTOMER: &str = r"
local before = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET')
return {before or ARGV[1], redis.call('LRANGE', KEYS[2], 0, -1)}";

/// Moves a customer's parked events to its dead letter unless it was
/// claimed: then they are its claimant's, which forgets them once they are
/// in the partner's inbox. KEYS: claim, parked, dead. Answers how many
/// moved, or -1 when the customer is claimed.
const EXPIRE_PARKED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for _, item in ipairs(items) do redis.call('RPUSH', KEYS[3], item) end
redis.call('DEL', KEYS[2])
return #items";

/// Gives a book's lock back if the holder still has it. KEYS: the lock.
/// ARGV: the holder.
const UNLOCK_BOOK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
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

/// Key names; see `docs/redis-keys.md`. Each function sets `out` to a key,
/// so the click writer reuses one buffer per key from click to click.
mod keys {
    use crate::ids::{ClickId, VisitorId};

    pub const VERSION: &str = "lc:{catalog}:version";
    pub const PARTNERS: &str = "lc:{catalog}:partners";
    pub const TOKENS: &str = "lc:{catalog}:tokens";

    /// A key as a new string, for the reads that need one key once.
    pub fn owned(set: impl FnOnce(&mut String)) -> String {
        let mut out = String::new();
        set(&mut out);
        out
    }

    /// Sets `out` to the concatenation of `parts`. Keys are built on every
    /// click, so they skip the formatting machinery.
    fn set(out: &mut String, parts: &[&str]) {
        out.clear();
        for part in parts {
            out.push_str(part);
        }
    }

    fn hex(byte: u8) -> [u8; 2] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        [
            DIGITS[usize::from(byte >> 4)],
            DIGITS[usize::from(byte & 15)],
        ]
    }

    /// The two hex digits of `byte` as text.
    fn hex_str(digits: &[u8; 2]) -> &str {
        std::str::from_utf8(digits).expect("hex digits are ASCII")
    }

    pub fn campaigns(out: &mut String, partner: &str) {
        set(out, &["lc:{catalog}:campaigns:", partner]);
    }

    /// Click and visitor keys are spread over 256 tags (an id's last byte,
    /// which is random: its first bytes are its time), so a batch in a
    /// cluster needs at most 256 pipelines per kind, not one per click.
    pub fn click(out: &mut String, id: &ClickId) {
        let tag = hex(id.0[15]);
        set(
            out,
            &["lc:{c", hex_str(&tag), "}:click:", id.text().as_str()],
        );
    }

    pub fn visitor(out: &mut String, id: &VisitorId) {
        let tag = hex(id.0[15]);
        set(
            out,
            &["lc:{v", hex_str(&tag), "}:visitor:", id.text().as_str()],
        );
    }

    /// The marker of a counted batch, on the slot of `tag`, named by the
    /// first 16 bytes of a digest of its click ids.
    pub fn batch(out: &mut String, tag: &str, digest: &[u8]) {
        set(out, &["lc:{", tag, "}:batch:"]);
        for byte in &digest[..16] {
            out.push_str(hex_str(&hex(*byte)));
        }
    }

    pub const EVENT_IDS: &str = "lc:{events}:ids";
    pub const EVENT_STREAM: &str = "lc:{events}:stream";
    pub const EVENT_GROUP: &str = "workers";
    /// The dead letter of stream entries that are not events (a stream,
    /// capped near `UNREADABLE_KEPT` entries).
    pub const UNREADABLE: &str = "lc:{events}:unreadable";

    pub fn claim(out: &mut String, customer: &str) {
        set(out, &["lc:{cu:", customer, "}:claim"]);
    }

    /// A customer's `parked` or `dead` events.
    pub fn customer(out: &mut String, customer: &str, part: &str) {
        set(out, &["lc:{cu:", customer, "}:", part]);
    }

    /// Index of parked events: members `customer\tevent id`, scored by
    /// when they were parked (ms). A hint for listing and expiry; the
    /// customer's own list is the truth.
    pub const PARKED: &str = "lc:{events}:parked";
    /// Index of dead events, likewise.
    pub const DEAD: &str = "lc:{events}:dead";
    /// Partners whose inbox may hold events (a hint: each inbox is the
    /// truth, and workers settle the set against it).
    pub const READY: &str = "lc:{events}:ready";

    /// A key of a partner's book: `book`, `version`, `customers`,
    /// `conversions`, `history`, `ledger`, `inbox` or `lock`.
    pub fn book(out: &mut String, partner: &str, part: &str) {
        set(out, &["lc:{p:", partner, "}:", part]);
    }

    /// `day` is a UTC day as `YYYY-MM-DD`.
    pub fn day_clicks(out: &mut String, partner: &str, day: &str) {
        set(out, &["lc:{p:", partner, "}:clicks:", day]);
    }

    pub fn day_visitors(out: &mut String, partner: &str, day: &str, field: &str) {
        set(out, &["lc:{p:", partner, "}:uv:", day, ":", field]);
    }

    /// The counter field of a campaign and term. Names and terms never hold
    /// control characters, so a tab separates them unambiguously.
    pub fn field(out: &mut String, campaign: &str, term: &str) {
        set(out, &[campaign, "\t", term]);
    }
}

/// A click as stored: compact JSON. Borrowed when written, owned when an
/// escaped string is read back.
#[derive(Serialize, Deserialize)]
struct ClickRecord<'a> {
    #[serde(borrow)]
    c: Cow<'a, str>,
    #[serde(borrow)]
    v: Cow<'a, str>,
    #[serde(borrow)]
    p: Cow<'a, str>,
    #[serde(borrow)]
    m: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    t: Option<Cow<'a, str>>,
    a: i64,
}

impl ClickRecord<'_> {
    /// Appends the record of `click` to `out`.
    fn write(click: &Click, out: &mut Vec<u8>) {
        let (id, visitor) = (click.click_id.text(), click.visitor_id.text());
        let record = ClickRecord {
            c: Cow::Borrowed(id.as_str()),
            v: Cow::Borrowed(visitor.as_str()),
            p: Cow::Borrowed(&click.partner),
            m: Cow::Borrowed(&click.campaign),
            t: click.term.as_deref().map(Cow::Borrowed),
            a: click.at,
        };
        serde_json::to_writer(out, &record).expect("records serialize to JSON");
    }

    fn into_click(self) -> Option<Click> {
        Some(Click {
            click_id: ClickId::parse(&self.c)?,
            visitor_id: VisitorId::parse(&self.v)?,
            partner: self.p.as_ref().into(),
            campaign: self.m.as_ref().into(),
            term: self.t.map(|t| t.as_ref().into()),
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

/// The commands that write a batch of clicks, gathered in groups that can
/// each be sent as one pipeline. A single node takes one group; on a cluster
/// a pipeline must stay on one slot, so there it is one group per hash tag.
enum ClickBatch {
    Single(Box<ClickGroup>),
    Cluster(HashMap<String, ClickGroup>),
}

#[derive(Default)]
struct ClickGroup {
    records: ScriptCall,
    last_clicks: ScriptCall,
    counts: ScriptCall,
    /// The hash tag of the counters, and a digest of the counted click ids:
    /// together they name the batch marker.
    counted_tag: String,
    counted_ids: Sha256,
}

impl ClickGroup {
    /// A group with room for `clicks` clicks, so that filling it does not
    /// regrow its buffers.
    fn with_capacity(clicks: usize) -> Self {
        ClickGroup {
            records: ScriptCall::with_capacity(clicks, 2 * clicks, 128),
            last_clicks: ScriptCall::with_capacity(clicks, 3 * clicks, 48),
            counts: ScriptCall::with_capacity(2 * clicks, 3 * clicks, 64),
            ..ClickGroup::default()
        }
    }

    fn count(&mut self, click: &Click, buf: &ClickBuffers) {
        if self.counted_tag.is_empty() {
            self.counted_tag = hash_tag(&buf.counters_key).to_owned();
        }
        self.counted_ids.update(click.click_id.0);
        self.counts
            .key(&buf.counters_key)
            .key(&buf.visitors_key)
            .arg(buf.field.as_bytes())
            .arg(&click.visitor_id.0)
            .arg(buf.counters_expire.as_bytes());
    }

    /// One pipeline of up to three script calls: the click records, the
    /// visitors' last clicks, the counters.
    fn into_pipeline(self, scripts: &ClickScripts) -> Pipeline {
        let mut marker = String::new();
        keys::batch(&mut marker, &self.counted_tag, &self.counted_ids.finalize());
        let calls = [
            self.records.to_cmd(&scripts.records, None),
            self.last_clicks.to_cmd(&scripts.last_clicks, None),
            self.counts.to_cmd(&scripts.counts, Some(&marker)),
        ];
        let mut pipeline = Pipeline::with_capacity(calls.len());
        for cmd in calls.into_iter().flatten() {
            pipeline.add_command(cmd).ignore();
        }
        pipeline
    }
}

/// An `EVALSHA` assembled click by click. Keys and arguments are gathered
/// apart because the command lists every key before any argument.
#[derive(Default)]
struct ScriptCall {
    keys: Cmd,
    args: Cmd,
    key_count: usize,
    arg_count: usize,
    bytes: usize,
}

impl ScriptCall {
    /// Room for `keys` keys and `args` arguments of about `bytes` each.
    fn with_capacity(keys: usize, args: usize, bytes: usize) -> Self {
        ScriptCall {
            keys: Cmd::with_capacity(keys, keys * bytes),
            args: Cmd::with_capacity(args, args * bytes),
            ..ScriptCall::default()
        }
    }

    fn key(&mut self, key: &str) -> &mut Self {
        self.keys.arg(key);
        self.key_count += 1;
        self.bytes += key.len();
        self
    }

    fn arg(&mut self, arg: &[u8]) -> &mut Self {
        self.args.arg(arg);
        self.arg_count += 1;
        self.bytes += arg.len();
        self
    }

    /// The `EVALSHA`, with `first_key` before the gathered keys; `None`
    /// when nothing was gathered.
    fn to_cmd(&self, script: &Script, first_key: Option<&str>) -> Option<Cmd> {
        if self.key_count == 0 {
            return None;
        }
        let hash = script.get_hash();
        let first_len = first_key.map_or(0, str::len);
        let key_count = self.key_count + usize::from(first_key.is_some());
        let size = "EVALSHA".len() + hash.len() + 20 + first_len + self.bytes;
        let mut cmd = Cmd::with_capacity(3 + key_count + self.arg_count, size);
        cmd.arg("EVALSHA").arg(hash).arg(key_count);
        if let Some(key) = first_key {
            cmd.arg(key);
        }
        for arg in self.keys.args_iter().chain(self.args.args_iter()) {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        Some(cmd)
    }
}

impl ClickBatch {
    fn new(connection: &Connection, clicks: usize) -> Self {
        match connection {
            Connection::Single(_) => {
                ClickBatch::Single(Box::new(ClickGroup::with_capacity(clicks)))
            }
            Connection::Cluster(_) => ClickBatch::Cluster(HashMap::new()),
        }
    }

    /// The group of commands on `key`'s slot.
    fn group(&mut self, key: &str) -> &mut ClickGroup {
        match self {
            ClickBatch::Single(group) => group,
            ClickBatch::Cluster(by_tag) => {
                let tag = hash_tag(key);
                if !by_tag.contains_key(tag) {
                    by_tag.insert(tag.to_owned(), ClickGroup::default());
                }
                by_tag.get_mut(tag).expect("inserted above")
            }
        }
    }

    fn into_pipelines(self, scripts: &ClickScripts) -> Vec<Pipeline> {
        match self {
            ClickBatch::Single(group) => vec![group.into_pipeline(scripts)],
            ClickBatch::Cluster(by_tag) => by_tag
                .into_values()
                .map(|group| group.into_pipeline(scripts))
                .collect(),
        }
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

/// The keys and arguments of one click, rewritten in place for each click of
/// a batch: commands copy their arguments, so the buffers can be reused.
#[derive(Default)]
struct ClickBuffers {
    record: Vec<u8>,
    click_key: String,
    visitor_key: String,
    click_id: String,
    counters_key: String,
    visitors_key: String,
    field: String,
    at: String,
    expires: String,
    day: Option<NaiveDate>,
    day_text: String,
    counters_expire: String,
}

impl ClickBuffers {
    fn fill(&mut self, click: &Click, window_secs: u64) {
        // A batch's clicks mostly share a day: render it once.
        let day = click.day();
        if self.day != Some(day) {
            self.day = Some(day);
            self.day_text.clear();
            let _ = write!(self.day_text, "{day}");
            set_number(&mut self.counters_expire, day_expiry(day, window_secs));
        }
        self.record.clear();
        ClickRecord::write(click, &mut self.record);
        keys::click(&mut self.click_key, &click.click_id);
        keys::visitor(&mut self.visitor_key, &click.visitor_id);
        self.click_id.clear();
        click.click_id.write_to(&mut self.click_id);
        keys::day_clicks(&mut self.counters_key, &click.partner, &self.day_text);
        keys::field(
            &mut self.field,
            &click.campaign,
            click.term.as_deref().unwrap_or(""),
        );
        keys::day_visitors(
            &mut self.visitors_key,
            &click.partner,
            &self.day_text,
            &self.field,
        );
        set_number(&mut self.at, click.at);
        set_number(&mut self.expires, click.at + window_secs as i64);
    }
}

fn set_number(out: &mut String, n: i64) {
    out.clear();
    let _ = write!(out, "{n}");
}

/// The scripts a click batch runs; they are loaded again after a restart.
struct ClickScripts {
    records: Script,
    last_clicks: Script,
    counts: Script,
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

fn script_source(script: &Script) -> &'static str {
    // Scripts are compared by hash, so the source is found by hash too.
    [RECORD_CLICKS, LAST_CLICKS, COUNT_CLICKS]
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
            invocation.arg(&event.id).arg(encode(event));
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
