//! The Lua scripts the Redis store runs, one file each in `scripts/`.
//! Each runs atomically on one slot: its keys share a hash tag.

/// Counts the clicks of one batch (on one slot) once, however often the
/// batch is sent: the batch marker, named by a digest of the click ids and
/// kept a day (longer than any retry), makes a resent batch a no-op.
/// Increments are summed per counter before they are applied.
/// KEYS: the batch marker, then two per click: day counter hash, visitors
/// HyperLogLog. ARGV, three per click: counter field, visitor id, counters'
/// expiry (unix s).
pub(super) const COUNT_CLICKS: &str = include_str!("scripts/count_clicks.lua");

/// Stores click records. KEYS: click keys. ARGV, two per key: the record,
/// its expiry (unix s).
pub(super) const RECORD_CLICKS: &str = include_str!("scripts/record_clicks.lua");

/// Keeps each visitor's latest 20 clicks as `time:click id,…`, newest
/// first, whatever order clicks are written in. KEYS: visitor keys. ARGV,
/// three per key: click time, click id, expiry (unix s).
pub(super) const LAST_CLICKS: &str = include_str!("scripts/last_clicks.lua");

/// Queues events whose id was never seen. KEYS: the id set, the stream.
/// ARGV, two per event: id, event JSON.
/// Registers a coupon code unless it is taken. KEYS: the codes hash, the
/// partner's set of codes. ARGV: the code, the coupon's JSON. Answers 1
/// when registered, 0 when taken.
pub(super) const INSERT_COUPON: &str = include_str!("scripts/insert_coupon.lua");

pub(super) const ENQUEUE_EVENTS: &str = include_str!("scripts/enqueue_events.lua");

/// Applies a batch's (or payout's) changes to a partner's book, if the
/// book is still at the version read.
/// KEYS: version, book, customers, conversions, history, ledger, inbox,
/// payouts, payout ids, outbox (a stream of webhook events).
/// ARGV: expected version, events taken off the inbox, book JSON, then
/// counted groups: customers (id, JSON), cells (cell, JSON), history
/// changes in order (`+` score member, or `-` member), payouts (id, JSON);
/// the webhook events (their bodies, one a line, or '' for none); then the ledger
/// entries.
/// Answers 1 applied, -1 the book moved.
///
/// Each group is written with as few commands as its size allows (an
/// `HSET` of many fields, a `ZADD` of a run of additions): a command
/// called from Lua costs Redis a lookup and a client round of its own,
/// and one command per record was most of Redis's time in the worker.
pub(super) const COMMIT_BOOK: &str = include_str!("scripts/commit_book.lua");

/// Routes a customer's event: the claim if there is one, else the event is
/// parked with the customer. KEYS: claim, parked. ARGV: the parked record.
/// Answers the claim, or '' when parked.
pub(super) const ROUTE_EVENT: &str = include_str!("scripts/route_event.lua");

/// Claims a customer unless claimed; answers the claim that holds and the
/// parked records. KEYS: claim, parked. ARGV: the claim JSON.
pub(super) const CLAIM_CUSTOMER: &str = include_str!("scripts/claim_customer.lua");

/// Moves a customer's parked events to its dead letter unless it was
/// claimed: then they are its claimant's, which forgets them once they are
/// in the partner's inbox. KEYS: claim, parked, dead. Answers how many
/// moved, or -1 when the customer is claimed.
pub(super) const EXPIRE_PARKED: &str = include_str!("scripts/expire_parked.lua");

/// Gives a book's lock back if the holder still has it. KEYS: the lock.
/// ARGV: the holder.
pub(super) const UNLOCK_BOOK: &str = include_str!("scripts/unlock_book.lua");

/// KEYS: partners, tokens, version, changes. ARGV: id, record, token hash.
pub(super) const INSERT_PARTNER: &str = include_str!("scripts/insert_partner.lua");

/// KEYS: partners, version, changes. ARGV: id, record.
pub(super) const UPDATE_PARTNER: &str = include_str!("scripts/update_partner.lua");

/// KEYS: the partner's campaigns, version, changes. ARGV: slug, record,
/// partner id.
pub(super) const INSERT_CAMPAIGN: &str = include_str!("scripts/insert_campaign.lua");

/// Moves a partner's outbox entries into the webhook feed, once, or drops
/// them when no endpoint is registered. KEYS: gathered marks, feed, feed
/// counter, endpoints. ARGV: partner, stream id read after, last stream id
/// read, then the events. Answers 1 moved, 0 moved already.
pub(super) const GATHER_OUTBOX: &str = include_str!("scripts/gather_outbox.lua");

/// Drops a partner's outbox entries when no endpoint is registered.
/// KEYS: gathered marks, endpoints. ARGV: partner, the mark read, the last
/// stream id. Answers 1 dropped, 0 the mark moved, -1 endpoints exist.
pub(super) const DROP_OUTBOX: &str = include_str!("scripts/drop_outbox.lua");

/// Forgets a partner's outbox mark unless it changed. KEYS: the marks.
/// ARGV: partner, the mark read.
pub(super) const UNMARK_OUTBOX: &str = include_str!("scripts/unmark_outbox.lua");

/// KEYS: endpoints, cursors, feed counter. ARGV: id, endpoint JSON.
pub(super) const INSERT_WEBHOOK: &str = include_str!("scripts/insert_webhook.lua");

/// Saves an endpoint's cursor and delivery if it exists. KEYS: endpoints,
/// cursors, deliveries, delivery ids by position. ARGV: endpoint, cursor
/// JSON or '', event id or '', delivery JSON, position, deliveries kept.
pub(super) const SAVE_DELIVERY: &str = include_str!("scripts/save_delivery.lua");

/// Takes or renews a lease. KEYS: the lease. ARGV: holder, milliseconds.
pub(super) const LEASE: &str = include_str!("scripts/lease.lua");
