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

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::conversions::customer::{
    ConversionCounts, Customer, Derived, EntryKind, EventKey, PaymentEvent, Referral, RefundEvent,
    Signup, Terms,
};
use crate::conversions::events::{Event, EventKind};
use crate::conversions::money::Tier;
use crate::conversions::money::{self, minor_digits};

/// One line of the ledger. Amounts are signed: commissions add, clawbacks
/// and payouts take away; adjustments correct an earlier line of the same
/// `id` either way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the partner's ledger, from 1; pages count down from it.
    pub seq: u64,
    /// The event (commission, clawback, adjustment) or payout that made it.
    pub id: String,
    pub kind: EntryKind,
    pub customer: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    /// The event's time (a payout's: when it was made).
    pub at: DateTime<Utc>,
    pub available_at: DateTime<Utc>,
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
}

/// A partner's money summary: what every batch reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub arr: Decimal,
    /// Signup times (unix ms) of the partner's referred customers.
    pub signups: Vec<i64>,
    pub totals: BTreeMap<String, CurrencyTotals>,
    /// Entries written so far; the next gets `entries + 1`.
    pub entries: u64,
    /// The latest event applied: an event before it is late, and may
    /// change what came after it.
    pub latest: Option<EventKey>,
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
    pub currency: String,
    pub pending: Decimal,
    pub available: Decimal,
    pub paid: Decimal,
}

/// The rules of the program, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tiers: Vec<Tier>,
    pub hold_days: u32,
    /// Smallest payout per currency; a currency not listed is never paid.
    pub payout_minimum: BTreeMap<String, Decimal>,
}

impl Rules {
    fn terms(&self) -> Terms<'_> {
        Terms {
            hold_days: self.hold_days,
            arr_currency: arr_currency(self),
        }
    }
}

/// The currency ARR and tiers are measured in: USD when payouts list it,
/// else the first one payouts list.
pub fn arr_currency(rules: &Rules) -> &str {
    rules
        .payout_minimum
        .keys()
        .find(|c| c.as_str() == "USD")
        .or_else(|| rules.payout_minimum.keys().next())
        .map_or("USD", String::as_str)
}

impl CurrencyTotals {
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
                let digits = minor_digits(currency).unwrap_or(2);
                let shown = |mut amount: Decimal| {
                    amount.rescale(digits);
                    amount
                };
                Balance {
                    currency: currency.clone(),
                    pending: shown(pending),
                    available: shown(totals.available + matured),
                    paid: shown(totals.paid),
                }
            })
            .collect()
    }

    pub fn tier<'r>(&self, rules: &'r Rules, at: DateTime<Utc>) -> &'r Tier {
        let recent = money::signups_within(&self.signups, at, 12) > 0;
        money::tier_for(&rules.tiers, self.arr, recent)
    }

    fn entry(&mut self, id: &str, kind: EntryKind, customer: Option<&str>) -> LedgerEntry {
        self.entries += 1;
        LedgerEntry {
            seq: self.entries,
            id: id.to_owned(),
            kind,
            customer: customer.map(str::to_owned),
            amount: Decimal::ZERO,
            currency: String::new(),
            at: DateTime::default(),
            available_at: DateTime::default(),
        }
    }
}

fn time(unix_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(unix_ms).unwrap_or_default()
}

/// The report cell of a referred customer: `day\tcampaign\tterm`, the UTC
/// day of its click.
pub fn conversion_cell(referral: &Referral) -> String {
    let day = DateTime::from_timestamp(referral.click_at, 0)
        .unwrap_or_default()
        .date_naive();
    format!(
        "{day}\t{}\t{}",
        referral.campaign,
        referral.term.as_deref().unwrap_or("")
    )
}

/// Parses a cell key back into (day, campaign, term).
pub fn parse_conversion_cell(key: &str) -> Option<(chrono::NaiveDate, String, String)> {
    let mut parts = key.splitn(3, '\t');
    let day = parts.next()?.parse().ok()?;
    let campaign = parts.next()?.to_owned();
    let term = parts.next()?.to_owned();
    Some((day, campaign, term))
}

// ---- applying a batch ----------------------------------------------------

/// What to load of a partner's book for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BookRequest {
    pub customers: BTreeSet<String>,
    pub cells: BTreeSet<String>,
    /// The history from this time (ms) on, when a late event needs it.
    pub history_from: Option<i64>,
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
    pub cells: BTreeMap<String, ConversionCounts>,
    /// Loaded from `history_from` on, when requested.
    pub history: Option<History>,
}

/// Everything a batch (or payout) changes, written all or nothing. An
/// event's exactly-once record is its customer's record, which holds every
/// event it took: a redelivered event finds itself there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub book: Book,
    pub customers: Vec<Customer>,
    pub cells: Vec<(String, ConversionCounts)>,
    pub history: Vec<HistoryChange>,
    pub entries: Vec<LedgerEntry>,
    /// Events taken off the head of the partner's inbox.
    pub inbox_taken: usize,
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
pub enum Applied {
    Done(Changes, Vec<(String, Effect)>),
    Load(BookRequest),
}

/// The request that loads what `events` need.
pub fn request_for(events: &[Incoming<'_>]) -> BookRequest {
    let mut request = BookRequest::default();
    for incoming in events {
        request.customers.insert(incoming.event.customer.clone());
        request.cells.insert(conversion_cell(incoming.referral));
    }
    request
}

/// Applies `events` to the book `view` was loaded as (for `request`).
/// Answers [`Applied::Load`] when a late event needs more of the book: the
/// history, or customers whose rates it changes.
pub fn apply(
    view: BookView,
    request: &BookRequest,
    events: &[Incoming<'_>],
    rules: &Rules,
    now_ms: i64,
) -> Applied {
    let mut needed = request.clone();
    let base = request_for(events);
    needed.customers.extend(base.customers);
    needed.cells.extend(base.cells);
    let BookView {
        book,
        customers,
        cells,
        history,
        ..
    } = view;
    let mut run = BatchRun {
        rules,
        book,
        customers,
        cells: &cells,
        history,
        derived: HashMap::new(),
        history_changes: Vec::new(),
        needed,
        rerate_from: None,
    };
    if run.needed != *request {
        return Applied::Load(run.needed);
    }
    let mut sorted: Vec<&Incoming<'_>> = events.iter().collect();
    sorted.sort_by_key(|i| (i.event.at.timestamp_millis(), i.event.id.as_str()));
    // The same event twice in one batch (a redelivery that met the
    // first in an inbox) is taken once.
    let mut taken: HashSet<&str> = HashSet::new();
    let mut effects = Vec::with_capacity(events.len());
    for incoming in sorted {
        let id = incoming.event.id.as_str();
        if !taken.insert(id) {
            effects.push((id.to_owned(), Effect::Duplicate));
            continue;
        }
        match run.take(incoming) {
            Ok(effect) => effects.push((id.to_owned(), effect)),
            Err(()) => return Applied::Load(run.needed),
        }
    }
    // A signup's rate is the tier of everything before it, so rating the
    // later signups in time order once everything is taken gives what
    // taking the events in time order gives.
    if let Some(from) = run.rerate_from.take() {
        if run.rerate_after(&from).is_err() {
            return Applied::Load(run.needed);
        }
    }
    let changes = run.finish(now_ms);
    for (id, effect) in &mut effects {
        if *effect == Effect::Applied && changes.1.contains(id.as_str()) {
            *effect = Effect::Parked;
        }
    }
    Applied::Done(changes.0, effects)
}

/// The state of one batch.
struct BatchRun<'r> {
    rules: &'r Rules,
    book: Book,
    customers: BTreeMap<String, Customer>,
    /// The report cells as loaded.
    cells: &'r BTreeMap<String, ConversionCounts>,
    history: Option<History>,
    /// Customers derived in this batch, by id.
    derived: HashMap<String, Derived>,
    /// History members to write, in order: a member may be removed and
    /// added again within one batch.
    history_changes: Vec<HistoryChange>,
    needed: BookRequest,
    /// The earliest moment late events changed: every signup after it is
    /// rated again once the batch is taken.
    rerate_from: Option<EventKey>,
}

impl<'r> BatchRun<'r> {
    /// Takes one event into its customer's record. Err: load `needed`.
    fn take(&mut self, incoming: &Incoming<'_>) -> Result<Effect, ()> {
        let event = incoming.event;
        let key = EventKey {
            at: event.at.timestamp_millis(),
            id: event.id.clone(),
        };
        let late = self.book.latest.as_ref().is_some_and(|l| &key < l);
        let covered = self.history.as_ref().is_some_and(|h| h.from <= key.at);
        if late && !covered {
            let from = self.needed.history_from.map_or(key.at, |f| f.min(key.at));
            self.needed.history_from = Some(from);
            return Err(());
        }
        let customer = self
            .customers
            .entry(event.customer.clone())
            .or_insert_with(|| Customer::new(&event.customer, incoming.referral.clone()));
        if customer.holds(&event.id) {
            return Ok(Effect::Duplicate);
        }
        let mut from = None;
        match &event.kind {
            EventKind::Signup { billing, .. } => {
                // The customer's earliest signup counts; a later one
                // changes nothing, and an earlier one arriving late
                // replaces it.
                match customer.signup.as_ref().map(|s| (s.key.clone(), s.rate)) {
                    Some((first, _)) if first < key => return Ok(Effect::Duplicate),
                    Some((replaced, rate)) => {
                        self.forget_signup(&replaced, &event.customer, rate);
                    }
                    None => {}
                }
                let rate = rate_at(&self.book, self.history.as_ref(), &key, self.rules, late);
                self.customers
                    .get_mut(&event.customer)
                    .expect("inserted above")
                    .signup = Some(Signup {
                    key: key.clone(),
                    billing: *billing,
                    rate,
                });
                self.book.signups.push(key.at);
                self.record_signup(&key, &event.customer, None, rate);
                from = Some(key.clone());
            }
            EventKind::Payment {
                amount,
                currency,
                period,
            } => customer.payments.push(PaymentEvent {
                key: key.clone(),
                amount: *amount,
                currency: currency.clone(),
                period: *period,
            }),
            EventKind::Refund {
                payment,
                amount,
                currency,
            } => customer.refunds.push(RefundEvent {
                key: key.clone(),
                payment: payment.clone(),
                amount: *amount,
                currency: currency.clone(),
            }),
            EventKind::Cancel => customer.cancels.push(key.clone()),
        }
        let moved = self.refresh(&event.customer);
        if late {
            let from = match (from, moved) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Rerated once, from the earliest, after the batch's last
            // event: each late event rerating every later signup made a
            // batch of late events quadratic (a tenth of a worker's CPU
            // with two workers, `perf`).
            if let Some(from) = from {
                self.rerate_from = Some(match self.rerate_from.take() {
                    Some(earlier) => earlier.min(from),
                    None => from,
                });
            }
        }
        if !late {
            self.book.latest = Some(key);
        }
        Ok(Effect::Applied)
    }

    /// Takes a signup out of the book and its history, for an earlier one
    /// of the same customer.
    fn forget_signup(&mut self, key: &EventKey, customer: &str, rate: Decimal) {
        if let Some(at) = self.book.signups.iter().position(|s| *s == key.at) {
            self.book.signups.swap_remove(at);
        }
        self.remove_member(signup_member(key, customer, rate), key.at);
        if let Some(history) = &mut self.history {
            history.signups.remove(key);
        }
    }

    /// Records a signup's rate (`before`: the rate it had, if any).
    fn record_signup(
        &mut self,
        key: &EventKey,
        customer: &str,
        before: Option<Decimal>,
        rate: Decimal,
    ) {
        if let Some(before) = before {
            self.remove_member(signup_member(key, customer, before), key.at);
        }
        self.add_member(signup_member(key, customer, rate), key.at);
        if let Some(history) = &mut self.history {
            let record = SignupRecord {
                customer: customer.to_owned(),
                rate,
            };
            history.signups.insert(key.clone(), record);
        }
    }

    fn add_member(&mut self, member: String, at: i64) {
        self.history_changes.push(HistoryChange::Add(member, at));
    }

    fn remove_member(&mut self, member: String, at: i64) {
        self.history_changes.push(HistoryChange::Remove(member, at));
    }

    /// Derives a customer again and moves the partner's ARR with it.
    /// Answers the earliest moment its ARR changes moved, if any.
    fn refresh(&mut self, id: &str) -> Option<EventKey> {
        let customer = self.customers.get_mut(id).expect("loaded");
        let derived = customer.derive(self.rules.terms());
        self.book.arr += derived.arr_share - customer.arr_share;
        customer.arr_share = derived.arr_share;
        let before: BTreeMap<EventKey, Decimal> = customer.arr_points.iter().cloned().collect();
        let after: BTreeMap<EventKey, Decimal> = derived.arr_points.iter().cloned().collect();
        customer.arr_points = derived.arr_points.clone();
        self.derived.insert(id.to_owned(), derived);
        let keys: BTreeSet<&EventKey> = before.keys().chain(after.keys()).collect();
        let mut moved: Option<EventKey> = None;
        for key in keys {
            let (old, new) = (before.get(key), after.get(key));
            if old == new {
                continue;
            }
            if moved.is_none() {
                moved = Some(key.clone()); // keys come in order
            }
            if let Some(old) = old {
                self.remove_member(arr_member(key, *old), key.at);
            }
            if let Some(new) = new {
                self.add_member(arr_member(key, *new), key.at);
            }
            if let Some(history) = &mut self.history {
                match new {
                    Some(change) => history.arr.insert(key.clone(), *change),
                    None => history.arr.remove(key),
                };
            }
        }
        moved
    }

    /// Recomputes the rate of every customer who signed up after `from`,
    /// in time order, now that what came before them changed. A changed
    /// rate changes that customer's ARR after its signup, which later
    /// signups then see.
    fn rerate_after(&mut self, from: &EventKey) -> Result<(), ()> {
        let later: Vec<EventKey> = self
            .history
            .as_ref()
            .expect("loaded for a late event")
            .signups
            .range((
                std::ops::Bound::Excluded(from.clone()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k.clone())
            .collect();
        let Some(first) = later.first() else {
            return Ok(());
        };
        // The ARR before each signup, kept as a running sum in time order:
        // a rerated customer changes the ARR only from its own signup on,
        // which is never before the signup being looked at.
        let history = self.history.as_ref().expect("loaded");
        let since_first: Decimal = history.arr.range(first.clone()..).map(|(_, v)| *v).sum();
        let mut arr_before = self.book.arr - since_first;
        let mut summed_to = first.clone();
        // Customers to load before this can finish: gathered over the whole
        // pass, so that a cascade costs a few reloads, not one per customer.
        let mut missing = false;
        for key in later {
            let history = self.history.as_ref().expect("loaded");
            arr_before += history
                .arr
                .range(summed_to.clone()..key.clone())
                .map(|(_, v)| *v)
                .sum::<Decimal>();
            summed_to = key.clone();
            let rate = tier_rate_with(&self.book, history, &key, arr_before, self.rules);
            let record = &history.signups[&key];
            if record.rate == rate {
                continue;
            }
            let customer = record.customer.clone();
            if !self.needed.customers.contains(&customer) {
                self.needed.customers.insert(customer);
                missing = true;
                continue;
            }
            let Some(loaded) = self.customers.get_mut(&customer) else {
                continue; // a signup without its record: nothing to rerate
            };
            let cell = conversion_cell(&loaded.referral);
            if !self.needed.cells.contains(&cell) {
                self.needed.cells.insert(cell);
                missing = true;
                continue;
            }
            let Some(signup) = &mut loaded.signup else {
                continue;
            };
            let before = std::mem::replace(&mut signup.rate, rate);
            self.record_signup(&key, &customer, Some(before), rate);
            self.refresh(&customer);
        }
        if missing {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Posts what each customer of the batch is owed beyond what the ledger
    /// holds, and moves the report cells with them. Answers the changes
    /// and the ids of events that stay parked.
    fn finish(mut self, now_ms: i64) -> (Changes, HashSet<String>) {
        let mut entries = Vec::new();
        let mut cells: BTreeMap<String, ConversionCounts> = BTreeMap::new();
        let mut parked = HashSet::new();
        let mut ids: Vec<&String> = self.derived.keys().collect();
        ids.sort();
        let mut customers = Vec::with_capacity(ids.len());
        for id in ids {
            let derived = &self.derived[id];
            let customer = self.customers.get_mut(id).expect("derived from it");
            // Posted in event-time order, so the ledger reads like the
            // customer's history.
            let mut owed_in_order: Vec<(&String, &crate::conversions::customer::Posting)> =
                derived.owed.iter().collect();
            owed_in_order.sort_by_key(|(source, owed)| (owed.at, *source));
            for (source, owed) in owed_in_order {
                let posted = customer.posted.get(source).copied();
                let change = owed.amount - posted.unwrap_or_default();
                if change.is_zero() {
                    continue;
                }
                let kind = if posted.is_some() {
                    EntryKind::Adjustment
                } else {
                    owed.kind
                };
                let mut entry = self.book.entry(source, kind, Some(id));
                entry.amount = change;
                entry.currency = owed.currency.clone();
                entry.at = time(owed.at);
                entry.available_at = time(owed.available_at);
                self.book
                    .totals
                    .entry(owed.currency.clone())
                    .or_default()
                    .credit(change, owed.available_at, now_ms);
                customer.posted.insert(source.clone(), owed.amount);
                entries.push(entry);
            }
            if derived.counts != customer.counts {
                let cell_key = conversion_cell(&customer.referral);
                let loaded = self.cells;
                let cell = cells
                    .entry(cell_key.clone())
                    .or_insert_with(|| loaded.get(&cell_key).cloned().unwrap_or_default());
                cell.replace(&customer.counts, &derived.counts);
                customer.counts = derived.counts.clone();
            }
            parked.extend(derived.parked.iter().map(|(id, _)| id.clone()));
        }
        for id in self.derived.keys() {
            if let Some(customer) = self.customers.remove(id) {
                customers.push(customer);
            }
        }
        customers.sort_by(|a, b| a.id.cmp(&b.id));
        let changes = Changes {
            book: self.book,
            customers,
            cells: cells.into_iter().collect(),
            history: self.history_changes,
            entries,
            inbox_taken: 0,
        };
        (changes, parked)
    }
}

/// The rate of a customer signing up at `key`: the partner's tier then,
/// before counting the customer.
fn rate_at(
    book: &Book,
    history: Option<&History>,
    key: &EventKey,
    rules: &Rules,
    late: bool,
) -> Decimal {
    match history {
        Some(history) if late => tier_rate(book, history, key, rules),
        // In order: every ARR change and signup so far came before it.
        _ => book.tier(rules, time(key.at)).rate,
    }
}

/// The tier's rate at `key` from the history, which holds everything from
/// `history.from <= key.at` on: the ARR before `key` is today's less what
/// changed from `key` on, and the latest signup before it is in the
/// history or, earlier, among the book's signup times.
fn tier_rate(book: &Book, history: &History, key: &EventKey, rules: &Rules) -> Decimal {
    let since_key: Decimal = history.arr.range(key.clone()..).map(|(_, v)| *v).sum();
    tier_rate_with(book, history, key, book.arr - since_key, rules)
}

/// The tier's rate at `key` given the ARR before it.
fn tier_rate_with(
    book: &Book,
    history: &History,
    key: &EventKey,
    arr_before: Decimal,
    rules: &Rules,
) -> Decimal {
    let since = money::months_before(key.at, 12);
    let latest_before = history
        .signups
        .range(..key.clone())
        .next_back()
        .map(|(k, _)| k.at)
        .or_else(|| {
            book.signups
                .iter()
                .copied()
                .filter(|at| *at < history.from)
                .max()
        });
    let recent = latest_before.is_some_and(|at| at > since);
    money::tier_for(&rules.tiers, arr_before, recent).rate
}

// ---- payouts and status --------------------------------------------------

/// Why a payout is refused: the 422 reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutRefusal {
    #[error("the partner has no paypal_email")]
    NoPaypalEmail,
    #[error("{0} cannot be paid out (no payout.minimum for it)")]
    CurrencyNotPaid(String),
    #[error("the available balance {available} {currency} is below the minimum {minimum}")]
    BelowMinimum {
        currency: String,
        available: Decimal,
        minimum: Decimal,
    },
    #[error("there is no positive available balance in {0}")]
    NothingAvailable(String),
}

impl PayoutRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            PayoutRefusal::NoPaypalEmail => "no_paypal_email",
            PayoutRefusal::CurrencyNotPaid(_) => "currency_not_paid",
            PayoutRefusal::BelowMinimum { .. } => "below_minimum",
            PayoutRefusal::NothingAvailable(_) => "nothing_available",
        }
    }
}

/// A payout of the whole available balance of `currency`: the book after
/// it and its ledger entry.
pub fn payout(
    book: &Book,
    rules: &Rules,
    has_paypal_email: bool,
    id: &str,
    currency: &str,
    now: DateTime<Utc>,
) -> Result<Changes, PayoutRefusal> {
    if !has_paypal_email {
        return Err(PayoutRefusal::NoPaypalEmail);
    }
    let minimum = *rules
        .payout_minimum
        .get(currency)
        .ok_or_else(|| PayoutRefusal::CurrencyNotPaid(currency.to_owned()))?;
    let mut book = book.clone();
    let totals = book.totals.entry(currency.to_owned()).or_default();
    totals.settle(now.timestamp_millis());
    let available = totals.available;
    if available <= Decimal::ZERO {
        return Err(PayoutRefusal::NothingAvailable(currency.to_owned()));
    }
    if available < minimum {
        return Err(PayoutRefusal::BelowMinimum {
            currency: currency.to_owned(),
            available,
            minimum,
        });
    }
    totals.available = Decimal::ZERO;
    totals.paid += available;
    let mut entry = book.entry(id, EntryKind::Payout, None);
    entry.amount = -available;
    entry.currency = currency.to_owned();
    entry.at = now;
    entry.available_at = now;
    Ok(Changes {
        book,
        entries: vec![entry],
        ..Changes::default()
    })
}

/// A partner's standing in the program, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramStatus {
    pub tier: String,
    pub rate: Decimal,
    pub arr: Decimal,
    pub arr_currency: String,
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
        let shown =
            |amount: Decimal| money::round_minor(amount, minor_digits(currency).unwrap_or(2));
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
            arr_currency: currency.to_owned(),
            next_tier,
            new_customers_3_months: new_3,
            new_customers_12_months: new_12,
            free_license_months: money::free_license_months(new_3),
            marketplace_listed: new_12 > 0,
        }
    }
}

#[cfg(test)]
mod tests;
