//! A partner's book: its balances, ARR, signups and ledger, and the pure
//! function that applies a batch of events to it so that the result
//! depends only on the set of events, never on the order they came in.
//!
//! How: each customer's money is derived from all of its events in
//! event-time order (`customer`); the partner keeps its ARR history and
//! signups by event time (`History`), so the tier at any moment, and hence
//! each customer's locked rate, can be recomputed when an earlier event
//! arrives late. What the ledger should hold is compared with what it holds,
//! and the difference is posted as new entries: the ledger only grows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::conversions::customer::{
    ConversionCounts, Customer, Derived, EntryKind, EventKey, PaymentEvent, Referral, RefundEvent,
    Signup, Terms,
};
use crate::conversions::events::{Event, EventKind};
use crate::conversions::money::Tier;
use crate::conversions::money::{self, Currency, Money};
use crate::ids::PayoutId;
use crate::webhooks::outbox::OutboxEvent;

/// One line of the ledger. Amounts are signed changes of the partner's
/// balance (pending and available): commissions add, clawbacks take away,
/// adjustments correct an earlier line of the same `id` either way; a
/// requested payout takes its amount away, a failed one gives it back, a
/// paid one changes nothing (the money had already left the balance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the partner's ledger, from 1; pages count down from it.
    pub seq: u64,
    /// The event (commission, clawback, adjustment) or payout that made it.
    pub id: String,
    pub kind: EntryKind,
    pub customer: Option<String>,
    pub amount: Decimal,
    pub currency: Currency,
    /// The event's time (a payout's: when it was made).
    pub at: DateTime<Utc>,
    pub available_at: DateTime<Utc>,
    /// When the entry was written: statements go by it, so that a month's
    /// statement never changes once the month is over. Absent on entries
    /// written before it was kept (their `at` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_at: Option<DateTime<Utc>>,
    /// On a payout's entries: the payout's amount, so that what is in
    /// payout and what was paid add up from the ledger alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_amount: Option<Decimal>,
    /// On a payout's entries: the PayPal reference of a paid payout, the
    /// reason of a failed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The running totals of one currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    /// Amounts already available when posted, less payouts.
    pub available: Decimal,
    /// Paid out so far.
    pub paid: Decimal,
    /// Amounts that were not available when posted: (unix ms, amount).
    pub held: Vec<(i64, Decimal)>,
    /// Requested payouts not yet paid or failed. Last: the stored form
    /// before it had no such field (`stored.rs`).
    pub in_payout: Decimal,
}

/// A partner's money summary: what every batch reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub arr: Decimal,
    /// Signup times (unix ms) of the partner's referred customers.
    pub signups: Vec<i64>,
    pub totals: BTreeMap<Currency, CurrencyTotals>,
    /// Entries written so far; the next gets `entries + 1`.
    pub entries: u64,
    /// The latest event applied: an event before it is late, and may
    /// change what came after it.
    pub latest: Option<EventKey>,
    /// (signup ms, click-to-signup seconds) of each referred customer, for
    /// the timing histogram. Last: the stored form before it had no such
    /// field (`stored.rs`).
    pub delays: Vec<(i64, i64)>,
}

/// A signup as the partner's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignupRecord {
    pub customer: String,
    pub rate: Decimal,
}

/// The partner's ARR changes and signups by event time: enough to know its
/// tier at any moment. Stored as a set of members scored by their time
/// (ms), so a late event reads only what came from its time on, and an
/// in-order batch writes its few members without reading any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The members held are those from this time (ms) on.
    pub from: i64,
    pub arr: BTreeMap<EventKey, Decimal>,
    pub signups: BTreeMap<EventKey, SignupRecord>,
}

/// The stored form of a history member; its score is the event's time.
fn arr_member(key: &EventKey, change: Decimal) -> String {
    format!("a\t{}\t{change}", key.id)
}

fn signup_member(key: &EventKey, customer: &str, rate: Decimal) -> String {
    format!("s\t{}\t{customer}\t{rate}", key.id)
}

impl History {
    /// Rebuilds the history from `from` on out of its stored members and
    /// their scores.
    pub fn from_members<'a>(from: i64, members: impl IntoIterator<Item = (&'a str, i64)>) -> Self {
        let mut history = History {
            from,
            ..History::default()
        };
        for (member, at) in members {
            let mut parts = member.split('\t');
            let (Some(kind), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let key = EventKey {
                at,
                id: id.to_owned(),
            };
            match (kind, parts.next(), parts.next()) {
                ("a", Some(change), None) => {
                    if let Ok(change) = change.parse() {
                        history.arr.insert(key, change);
                    }
                }
                ("s", Some(customer), Some(rate)) => {
                    if let Ok(rate) = rate.parse() {
                        let customer = customer.to_owned();
                        history.signups.insert(key, SignupRecord { customer, rate });
                    }
                }
                _ => {}
            }
        }
        history
    }
}

/// A change to the stored history; a batch's changes apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryChange {
    /// A member and its score (the event's time, ms).
    Add(String, i64),
    /// A member and the score it was added with: the embedded store keys
    /// members by time, so that in-order events append.
    Remove(String, i64),
}

/// A balance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    pub currency: Currency,
    pub pending: Decimal,
    pub available: Decimal,
    pub in_payout: Decimal,
    pub paid: Decimal,
    /// Part of `pending`: commissions of held customers, waiting for the
    /// program team to release or reject them.
    pub on_hold: Decimal,
}

/// The rules of the program, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tiers: Vec<Tier>,
    pub hold_days: u32,
    /// Smallest payout per currency; a currency not listed is never paid.
    pub payout_minimum: BTreeMap<Currency, Decimal>,
    /// A signup sooner than this after its click (ms) is held; 0: never.
    pub min_click_age_ms: i64,
}

impl Rules {
    fn terms(&self) -> Terms {
        Terms {
            hold_days: self.hold_days,
            arr_currency: arr_currency(self),
        }
    }
}

/// The currency ARR and tiers are measured in: USD when payouts list it,
/// else the first one payouts list.
pub fn arr_currency(rules: &Rules) -> Currency {
    let listed = || rules.payout_minimum.keys().copied();
    listed()
        .find(|&c| c == Currency::USD)
        .or_else(|| listed().next())
        .unwrap_or(Currency::USD)
}

/// The time under which held customers' amounts wait in
/// `CurrencyTotals::held`: never reached, so they stay pending until a
/// release moves them to their own times.
pub const ON_HOLD: i64 = i64::MAX;

impl CurrencyTotals {
    /// Adds `amount` (either sign) to what waits for a hold's decision.
    fn put_on_hold(&mut self, amount: Decimal) {
        match self.held.iter_mut().find(|(at, _)| *at == ON_HOLD) {
            Some((_, held)) => *held += amount,
            None => self.held.push((ON_HOLD, amount)),
        }
        self.held
            .retain(|(at, amount)| *at != ON_HOLD || !amount.is_zero());
    }

    /// What waits for holds' decisions.
    fn on_hold(&self) -> Decimal {
        self.held
            .iter()
            .filter(|(at, _)| *at == ON_HOLD)
            .map(|(_, amount)| amount)
            .sum()
    }

    /// Moves what has matured by `now` (unix ms) from held to available.
    fn settle(&mut self, now: i64) {
        let (matured, held): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(at, _)| *at <= now);
        self.held = held;
        self.available += matured.iter().map(|(_, amount)| amount).sum::<Decimal>();
    }

    fn credit(&mut self, amount: Decimal, available_at: i64, now: i64) {
        if available_at <= now {
            self.available += amount;
        } else {
            self.held.push((available_at, amount));
        }
    }

    fn pending_at(&self, now: i64) -> (Decimal, Decimal) {
        let mut pending = Decimal::ZERO;
        let mut matured = Decimal::ZERO;
        for (at, amount) in &self.held {
            if *at <= now {
                matured += amount;
            } else {
                pending += amount;
            }
        }
        (pending, matured)
    }
}

impl Book {
    pub fn balances(&self, now: DateTime<Utc>) -> Vec<Balance> {
        self.totals
            .iter()
            .map(|(currency, totals)| {
                let (pending, matured) = totals.pending_at(now.timestamp_millis());
                // Shown in the currency's minor unit: "0.00", not "0".
                let shown = |amount: Decimal| currency.shown(amount);
                Balance {
                    currency: *currency,
                    pending: shown(pending),
                    available: shown(totals.available + matured),
                    in_payout: shown(totals.in_payout),
                    paid: shown(totals.paid),
                    on_hold: shown(totals.on_hold()),
                }
            })
            .collect()
    }

    pub fn tier<'r>(&self, rules: &'r Rules, at: DateTime<Utc>) -> &'r Tier {
        let recent = money::signups_within(&self.signups, at, 12) > 0;
        money::tier_for(&rules.tiers, self.arr, recent)
    }

    fn entry(
        &mut self,
        id: &str,
        kind: EntryKind,
        customer: Option<&str>,
        money: Money,
    ) -> LedgerEntry {
        self.entries += 1;
        LedgerEntry {
            seq: self.entries,
            id: id.to_owned(),
            kind,
            customer: customer.map(str::to_owned),
            amount: money.amount,
            currency: money.currency,
            at: DateTime::default(),
            available_at: DateTime::default(),
            posted_at: None,
            payout_amount: None,
            note: None,
        }
    }
}

fn time(unix_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(unix_ms).unwrap_or_default()
}

/// The report cell a referred customer's conversions count in: the UTC
/// day of its click, its campaign and its term (empty for none). Stored
/// under its key, `day\tcampaign\tterm` (campaign names and terms hold no
/// tab).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConversionCell {
    pub day: NaiveDate,
    pub campaign: String,
    pub term: String,
}

impl ConversionCell {
    pub fn of(referral: &Referral) -> ConversionCell {
        let day = DateTime::from_timestamp(referral.click_at, 0)
            .unwrap_or_default()
            .date_naive();
        ConversionCell {
            day,
            campaign: referral.campaign.clone(),
            term: referral.term.clone().unwrap_or_default(),
        }
    }

    /// The key it is stored under.
    pub fn key(&self) -> String {
        format!("{}\t{}\t{}", self.day, self.campaign, self.term)
    }

    /// The cell stored under `key`; `None` for a key that is not one.
    pub fn parse_key(key: &str) -> Option<ConversionCell> {
        let mut parts = key.splitn(3, '\t');
        Some(ConversionCell {
            day: parts.next()?.parse().ok()?,
            campaign: parts.next()?.to_owned(),
            term: parts.next()?.to_owned(),
        })
    }
}

// ---- applying a batch ----------------------------------------------------

/// What to load of a partner's book for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookRequest {
    pub customers: BTreeSet<String>,
    pub cells: BTreeSet<ConversionCell>,
    /// The history from this time (ms) on, when a late event needs it.
    pub history_from: Option<i64>,
    /// Payouts a payout step reads.
    pub payouts: BTreeSet<PayoutId>,
}

/// A partner's book as loaded for a request, with the version to commit
/// against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BookView {
    pub book: Book,
    pub version: u64,
    /// The requested customers that exist.
    pub customers: BTreeMap<String, Customer>,
    /// The requested report cells (missing ones are empty).
    pub cells: BTreeMap<ConversionCell, ConversionCounts>,
    /// Loaded from `history_from` on, when requested.
    pub history: Option<History>,
    /// The requested payouts that exist.
    pub payouts: BTreeMap<PayoutId, Payout>,
}

/// Everything a batch (or payout) changes, written all or nothing. An
/// event's exactly-once record is its customer's record, which holds every
/// event it took: a redelivered event finds itself there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub book: Book,
    pub customers: Vec<Customer>,
    pub cells: Vec<(ConversionCell, ConversionCounts)>,
    pub history: Vec<HistoryChange>,
    pub entries: Vec<LedgerEntry>,
    /// Events taken off the head of the partner's inbox.
    pub inbox_taken: usize,
    /// Payout records written (new, or in their new status).
    pub payouts: Vec<Payout>,
    /// The webhook events the change reports, written with it
    /// (`webhooks::outbox`); filled in by the step, never by `apply`.
    pub outbox: Vec<OutboxEvent>,
}

/// What became of one event in the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Applied,
    /// Applied before, or a second signup of the customer: nothing changed.
    Duplicate,
    /// Kept, without effect until its predecessor (the customer's signup,
    /// the refunded payment) arrives.
    Parked,
}

/// An event of a customer the partner claimed.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub event: &'a Event,
    pub referral: &'a Referral,
}

/// The outcome of [`apply`]: the changes, or more to load first.
#[derive(Debug)]
// One per book step, moved once: boxing the changes would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub enum Applied {
    Done(Changes, Vec<(String, Effect)>),
    Load(BookRequest),
}

/// The request that loads what `events` need.
pub fn request_for(events: &[Incoming<'_>]) -> BookRequest {
    let mut request = BookRequest::default();
    for incoming in events {
        request
            .customers
            .insert(incoming.event.customer.as_str().to_owned());
        request.cells.insert(ConversionCell::of(incoming.referral));
    }
    request
}

/// A partner's standing in the program, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramStatus {
    pub tier: String,
    pub rate: Decimal,
    pub arr: Decimal,
    pub arr_currency: Currency,
    pub next_tier: Option<NextTier>,
    pub new_customers_3_months: usize,
    pub new_customers_12_months: usize,
    pub free_license_months: u32,
    pub marketplace_listed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextTier {
    pub name: String,
    pub min_arr: Decimal,
    /// ARR still missing, 0 when only a new customer is missing.
    pub arr_needed: Decimal,
    /// ARR reached as a share of the tier's threshold, 0 to 1.
    pub progress: f64,
    pub needs_recent_customer: bool,
}

impl Book {
    pub fn status(&self, rules: &Rules, now: DateTime<Utc>) -> ProgramStatus {
        let tier = self.tier(rules, now);
        let currency = arr_currency(rules);
        // ARR is a measure shown in the currency's unit, not a paid sum.
        let shown = |amount: Decimal| currency.shown(currency.round(amount));
        let new_3 = money::signups_within(&self.signups, now, 3);
        let new_12 = money::signups_within(&self.signups, now, 12);
        let next_tier = money::next_tier(&rules.tiers, tier).map(|next| {
            let progress = if next.min_arr.is_zero() {
                1.0
            } else {
                f64::try_from((self.arr / next.min_arr).min(Decimal::ONE)).unwrap_or(0.0)
            };
            NextTier {
                name: next.name.clone(),
                min_arr: next.min_arr,
                arr_needed: shown((next.min_arr - self.arr).max(Decimal::ZERO)),
                progress,
                needs_recent_customer: next.needs_recent_customer,
            }
        });
        ProgramStatus {
            tier: tier.name.clone(),
            rate: tier.rate,
            arr: shown(self.arr),
            arr_currency: currency,
            next_tier,
            new_customers_3_months: new_3,
            new_customers_12_months: new_12,
            free_license_months: money::free_license_months(new_3),
            marketplace_listed: new_12 > 0,
        }
    }
}

mod apply;
mod hold;
mod payout;
mod stored;

pub use self::apply::{apply, HELD_NOTE};
pub use self::hold::{decide_hold, posted_amounts, HoldConflict};
pub use self::payout::{
    request_payout, settle_payout, Payout, PayoutConflict, PayoutRefusal, PayoutStatus, Settlement,
};

#[cfg(test)]
mod tests;
