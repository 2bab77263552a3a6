//! Key names; see `docs/redis-keys.md`. Each function sets `out` to a key,
//! so the click writer reuses one buffer per key from click to click.

use crate::ids::{ClickId, VisitorId};

pub const VERSION: &str = "lc:{catalog}:version";
pub const PARTNERS: &str = "lc:{catalog}:partners";
pub const TOKENS: &str = "lc:{catalog}:tokens";
/// Each partner (`p\t<id>`) and campaign (`c\t<partner>\t<slug>`) scored by
/// the catalog version it last changed at.
pub const CHANGES: &str = "lc:{catalog}:changes";

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

/// Payout id → partner id: where a payout's record is.
pub const PAYOUT_OWNERS: &str = "lc:{payouts}:owners";

/// Webhook endpoint id → JSON endpoint.
pub const WEBHOOKS: &str = "lc:{webhooks}:endpoints";
/// Partners whose outbox may hold webhook events, scored by when a book
/// step last marked them (ms), before it committed.
pub const OUTBOX_MARKS: &str = "lc:{webhooks}:marks";
/// Partner → the id of the last outbox stream entry moved to the feed.
pub const OUTBOX_GATHERED: &str = "lc:{webhooks}:gathered";
/// The feed: JSON webhook events scored by their position.
pub const WEBHOOK_FEED: &str = "lc:{webhooks}:feed";
/// The feed's last position given.
pub const WEBHOOK_FEED_SEQ: &str = "lc:{webhooks}:seq";
/// Endpoint id → its JSON cursor (place in the feed, retry).
pub const WEBHOOK_CURSORS: &str = "lc:{webhooks}:cursors";
/// Who delivers now, and until when (its expiry).
pub const WEBHOOK_LEASE: &str = "lc:{webhooks}:lease";

/// An endpoint's deliveries: `records` (event id → JSON) or `order`
/// (event ids scored by feed position).
pub fn webhook_deliveries(out: &mut String, endpoint: &str, part: &str) {
    set(out, &["lc:{webhooks}:deliveries:", endpoint, ":", part]);
}

/// Coupon code → JSON coupon.
pub const COUPONS: &str = "lc:{coupons}:codes";

/// The codes of a partner, a set, on the coupons' slot.
pub fn partner_coupons(out: &mut String, partner: &str) {
    set(out, &["lc:{coupons}:partner:", partner]);
}

/// Held customer → partner id: where a hold's customer record is.
pub const HOLD_OWNERS: &str = "lc:{holds}:owners";
/// Held customers as `<held_at ms, 15 digits>.<customer>`, score 0, read
/// in that order. Hints, written before the commit: the customer's
/// record is the truth.
pub const HOLDS: &str = "lc:{holds}:index";

/// Payout ids in one status (`requested`, `paid`, `failed`) or `all`, a
/// sorted set of score 0 read by id (ids sort by request time). Hints,
/// written before the commit: the partner's record is the truth.
pub fn payout_index(out: &mut String, status: &str) {
    set(out, &["lc:{payouts}:", status]);
}

/// A key of a partner's book: `book`, `version`, `customers`,
/// `conversions`, `history`, `ledger`, `inbox`, `lock`, `payouts` (id →
/// record), `payout_ids` (a sorted set of score 0, read by id) or
/// `outbox` (a stream of webhook events, until gathered).
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

/// The part of `key` Redis Cluster hashes: the first `{…}`, else all of it.
pub fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
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
}
