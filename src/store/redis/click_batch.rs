//! A batch of clicks as Redis commands: each click's keys and arguments
//! written into reused buffers, gathered into one pipeline of script calls
//! per slot (one for a single node).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

use chrono::{Days, NaiveDate};
use redis::{Arg, Cmd, Pipeline, Script};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{self, hash_tag};
use super::scripts::{COUNT_CLICKS, LAST_CLICKS, RECORD_CLICKS};
use super::Connection;
use crate::ids::{ClickId, VisitorId};
use crate::store::Click;

/// A click as stored: compact JSON. Borrowed when written, owned when an
/// escaped string is read back.
#[derive(Serialize, Deserialize)]
pub(super) struct ClickRecord<'a> {
    #[serde(borrow)]
    pub(super) c: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) v: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) p: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) m: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(super) t: Option<Cow<'a, str>>,
    pub(super) a: i64,
}

impl ClickRecord<'_> {
    /// Appends the record of `click` to `out`.
    pub(super) fn write(click: &Click, out: &mut Vec<u8>) {
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

    pub(super) fn into_click(self) -> Option<Click> {
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

/// The commands that write a batch of clicks, gathered in groups that can
/// each be sent as one pipeline. A single node takes one group; on a cluster
/// a pipeline must stay on one slot, so there it is one group per hash tag.
pub(super) enum ClickBatch {
    Single(Box<ClickGroup>),
    Cluster(HashMap<String, ClickGroup>),
}

#[derive(Default)]
pub(super) struct ClickGroup {
    pub(super) records: ScriptCall,
    pub(super) last_clicks: ScriptCall,
    pub(super) counts: ScriptCall,
    /// The hash tag of the counters, and a digest of the counted click ids:
    /// together they name the batch marker.
    pub(super) counted_tag: String,
    pub(super) counted_ids: Sha256,
}

impl ClickGroup {
    /// A group with room for `clicks` clicks, so that filling it does not
    /// regrow its buffers.
    pub(super) fn with_capacity(clicks: usize) -> Self {
        ClickGroup {
            records: ScriptCall::with_capacity(clicks, 2 * clicks, 128),
            last_clicks: ScriptCall::with_capacity(clicks, 3 * clicks, 48),
            counts: ScriptCall::with_capacity(2 * clicks, 3 * clicks, 64),
            ..ClickGroup::default()
        }
    }

    pub(super) fn count(&mut self, click: &Click, buf: &ClickBuffers) {
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
    pub(super) fn into_pipeline(self, scripts: &ClickScripts) -> Pipeline {
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
pub(super) struct ScriptCall {
    pub(super) keys: Cmd,
    pub(super) args: Cmd,
    pub(super) key_count: usize,
    pub(super) arg_count: usize,
    pub(super) bytes: usize,
}

impl ScriptCall {
    /// Room for `keys` keys and `args` arguments of about `bytes` each.
    pub(super) fn with_capacity(keys: usize, args: usize, bytes: usize) -> Self {
        ScriptCall {
            keys: Cmd::with_capacity(keys, keys * bytes),
            args: Cmd::with_capacity(args, args * bytes),
            ..ScriptCall::default()
        }
    }

    pub(super) fn key(&mut self, key: &str) -> &mut Self {
        self.keys.arg(key);
        self.key_count += 1;
        self.bytes += key.len();
        self
    }

    pub(super) fn arg(&mut self, arg: &[u8]) -> &mut Self {
        self.args.arg(arg);
        self.arg_count += 1;
        self.bytes += arg.len();
        self
    }

    /// The `EVALSHA`, with `first_key` before the gathered keys; `None`
    /// when nothing was gathered.
    pub(super) fn to_cmd(&self, script: &Script, first_key: Option<&str>) -> Option<Cmd> {
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
    pub(super) fn new(connection: &Connection, clicks: usize) -> Self {
        match connection {
            Connection::Single(_) => {
                ClickBatch::Single(Box::new(ClickGroup::with_capacity(clicks)))
            }
            Connection::Cluster(_) => ClickBatch::Cluster(HashMap::new()),
        }
    }

    /// The group of commands on `key`'s slot.
    pub(super) fn group(&mut self, key: &str) -> &mut ClickGroup {
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

    pub(super) fn into_pipelines(self, scripts: &ClickScripts) -> Vec<Pipeline> {
        match self {
            ClickBatch::Single(group) => vec![group.into_pipeline(scripts)],
            ClickBatch::Cluster(by_tag) => by_tag
                .into_values()
                .map(|group| group.into_pipeline(scripts))
                .collect(),
        }
    }
}

/// The keys and arguments of one click, rewritten in place for each click of
/// a batch: commands copy their arguments, so the buffers can be reused.
#[derive(Default)]
pub(super) struct ClickBuffers {
    pub(super) record: Vec<u8>,
    pub(super) click_key: String,
    pub(super) visitor_key: String,
    pub(super) click_id: String,
    pub(super) counters_key: String,
    pub(super) visitors_key: String,
    pub(super) field: String,
    pub(super) at: String,
    pub(super) expires: String,
    pub(super) day: Option<NaiveDate>,
    pub(super) day_text: String,
    pub(super) counters_expire: String,
}

impl ClickBuffers {
    pub(super) fn fill(&mut self, click: &Click, window_secs: u64) {
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

pub(super) fn set_number(out: &mut String, n: i64) {
    out.clear();
    let _ = write!(out, "{n}");
}

/// The scripts a click batch runs; they are loaded again after a restart.
pub(super) struct ClickScripts {
    pub(super) records: Script,
    pub(super) last_clicks: Script,
    pub(super) counts: Script,
}

pub(super) fn script_source(script: &Script) -> &'static str {
    // Scripts are compared by hash, so the source is found by hash too.
    [RECORD_CLICKS, LAST_CLICKS, COUNT_CLICKS]
        .into_iter()
        .find(|source| Script::new(source).get_hash() == script.get_hash())
        .expect("only the click scripts are pipelined")
}

/// Unix time at which a day's counters expire: the window after the day ends.
pub(super) fn day_expiry(day: NaiveDate, window_secs: u64) -> i64 {
    let next = day.checked_add_days(Days::new(1)).unwrap_or(day);
    next.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp()
        + window_secs as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_days_counters_live_for_the_window_after_the_day() {
        let day: NaiveDate = "2026-11-01".parse().unwrap();
        assert_eq!(day_expiry(day, 10), 1_793_577_600 + 10);
    }
}
