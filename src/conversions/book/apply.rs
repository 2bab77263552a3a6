//! Applying a batch of events to a book: each customer's money derived
//! from all of its events in event-time order, the ledger told the
//! difference, later signups rated again when an event comes late.

use super::*;
use crate::conversions::customer::Posting;
use crate::conversions::hold::{self, Hold, HoldStatus};
use crate::conversions::money::{Billing, Money};

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
        newly_held: HashSet::new(),
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
    cells: &'r BTreeMap<ConversionCell, ConversionCounts>,
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
    /// Customers whose hold began in this batch after the ledger had
    /// posted for them: `finish` moves those amounts on hold.
    newly_held: HashSet<String>,
}

impl<'r> BatchRun<'r> {
    /// Takes one event into its customer's record. Err: load `needed`.
    fn take(&mut self, incoming: &Incoming<'_>) -> Result<Effect, ()> {
        let event = incoming.event;
        let key = EventKey {
            at: event.at.timestamp_millis(),
            id: event.id.as_str().to_owned(),
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
            .entry(event.customer.as_str().to_owned())
            .or_insert_with(|| Customer::new(event.customer.as_str(), incoming.referral.clone()));
        if customer.holds(event.id.as_str()) {
            return Ok(Effect::Duplicate);
        }
        let from = match &event.kind {
            EventKind::Signup { billing, .. } => {
                match self.take_signup(&key, event.customer.as_str(), *billing, late) {
                    Some(from) => Some(from),
                    None => return Ok(Effect::Duplicate),
                }
            }
            step => {
                record_step(customer, &key, step);
                None
            }
        };
        let moved = self.refresh(event.customer.as_str());
        if late {
            self.rerate_from_earliest([from, moved]);
        } else {
            self.book.latest = Some(key);
        }
        Ok(Effect::Applied)
    }

    /// The customer's earliest signup counts: a later one changes nothing
    /// (`None`), and an earlier one arriving late replaces it. Answers
    /// from when later figures may have moved.
    fn take_signup(
        &mut self,
        key: &EventKey,
        customer: &str,
        billing: Billing,
        late: bool,
    ) -> Option<EventKey> {
        let current = &self.customers[customer];
        match current.signup.as_ref().map(|s| (s.key.clone(), s.rate)) {
            Some((first, _)) if &first < key => return None,
            Some((replaced, rate)) => self.forget_signup(&replaced, customer, rate),
            None => {}
        }
        let rate = rate_at(&self.book, self.history.as_ref(), key, self.rules, late);
        // `take` inserted the customer before it asked.
        let record = self.customers.get_mut(customer).expect("inserted by take");
        record.signup = Some(Signup {
            key: key.clone(),
            billing,
            rate,
        });
        self.book.signups.push(key.at);
        // A coupon signup has no click: no delay to count, nothing to hold.
        if !record.referral.is_coupon() {
            let age_ms = hold::click_age_ms(&record.referral, key.at);
            self.book.delays.push((key.at, age_ms / 1000));
            self.hold_if_fast(customer, age_ms, key.at);
        }
        self.record_signup(key, customer, None, rate);
        Some(key.clone())
    }

    /// Holds the customer's commissions when its signup came sooner after
    /// the click than the rules allow. A customer is held once: a signup
    /// arriving late only makes the age shorter, and a decided hold stays
    /// decided.
    fn hold_if_fast(&mut self, customer: &str, age_ms: i64, signed_up_ms: i64) {
        let record = self.customers.get_mut(customer).expect("inserted by take");
        match &mut record.hold {
            Some(hold) => {
                if hold.status == HoldStatus::Held {
                    hold.click_age_ms = hold.click_age_ms.min(age_ms);
                }
            }
            None => {
                record.hold = Hold::for_signup(age_ms, self.rules.min_click_age_ms, signed_up_ms);
                if record.hold.is_some() && !record.posted.is_empty() {
                    self.newly_held.insert(customer.to_owned());
                }
            }
        }
    }

    /// Notes that later signups are rated again, once, from the earliest
    /// of `from`, after the batch's last event: each late event rerating
    /// every later signup made a batch of late events quadratic (a tenth
    /// of a worker's CPU with two workers, `perf`).
    fn rerate_from_earliest(&mut self, from: [Option<EventKey>; 2]) {
        for from in from.into_iter().flatten() {
            self.rerate_from = Some(match self.rerate_from.take() {
                Some(earlier) => earlier.min(from),
                None => from,
            });
        }
    }

    /// Takes a signup out of the book and its history, for an earlier one
    /// of the same customer.
    fn forget_signup(&mut self, key: &EventKey, customer: &str, rate: Decimal) {
        if let Some(at) = self.book.signups.iter().position(|s| *s == key.at) {
            self.book.signups.swap_remove(at);
        }
        if let Some(at) = self.book.delays.iter().position(|(s, _)| *s == key.at) {
            self.book.delays.swap_remove(at);
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
            let cell = ConversionCell::of(&loaded.referral);
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
        let mut cells: BTreeMap<ConversionCell, ConversionCounts> = BTreeMap::new();
        let mut parked = HashSet::new();
        let derived_all = std::mem::take(&mut self.derived);
        let mut ids: Vec<&String> = derived_all.keys().collect();
        ids.sort();
        for id in &ids {
            let derived = &derived_all[*id];
            if self.newly_held.contains(*id) {
                self.move_on_hold(id, derived, now_ms);
            }
            entries.extend(self.post_owed(id, derived, now_ms));
            let customer = self.customers.get_mut(*id).expect("derived from it");
            let counts = counts_of(customer, derived);
            if counts != customer.counts {
                let cell_key = ConversionCell::of(&customer.referral);
                let loaded = self.cells;
                let cell = cells
                    .entry(cell_key.clone())
                    .or_insert_with(|| loaded.get(&cell_key).cloned().unwrap_or_default());
                cell.replace(&customer.counts, &counts);
                customer.counts = counts;
            }
            parked.extend(derived.parked.iter().map(|(id, _)| id.clone()));
        }
        let mut customers: Vec<Customer> = ids
            .into_iter()
            .filter_map(|id| self.customers.remove(id))
            .collect();
        customers.sort_by(|a, b| a.id.cmp(&b.id));
        let changes = Changes {
            book: self.book,
            customers,
            cells: cells.into_iter().collect(),
            history: self.history_changes,
            entries,
            inbox_taken: 0,
            payouts: Vec::new(),
            outbox: Vec::new(),
        };
        (changes, parked)
    }

    /// The ledger entries for what the customer is owed beyond what the
    /// ledger holds, in event-time order so the ledger reads like the
    /// customer's history. A held customer's go on hold; a rejected one
    /// earns nothing more.
    fn post_owed(&mut self, id: &str, derived: &Derived, now_ms: i64) -> Vec<LedgerEntry> {
        let customer = self.customers.get_mut(id).expect("derived from it");
        if customer.is_rejected() {
            return Vec::new();
        }
        let held = customer.is_held();
        let mut owed_in_order: Vec<(&String, &Posting)> = derived.owed.iter().collect();
        owed_in_order.sort_by_key(|(source, owed)| (owed.at, *source));
        let mut entries = Vec::new();
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
            let money = Money::new(change, owed.currency);
            let mut entry = self.book.entry(source, kind, Some(id), money);
            entry.at = time(owed.at);
            entry.available_at = time(owed.available_at);
            entry.posted_at = Some(time(now_ms));
            let totals = self.book.totals.entry(owed.currency).or_default();
            if held {
                entry.note = Some(HELD_NOTE.to_owned());
                totals.put_on_hold(change);
            } else {
                totals.credit(change, owed.available_at, now_ms);
            }
            customer.posted.insert(source.clone(), owed.amount);
            entries.push(entry);
        }
        entries
    }

    /// Moves what the ledger already posted for a customer whose hold began
    /// in this batch (an earlier signup, arriving late, came too soon after
    /// the click) from the balance to what waits on hold.
    fn move_on_hold(&mut self, id: &str, derived: &Derived, now_ms: i64) {
        let customer = &self.customers[id];
        for (source, amount) in &customer.posted {
            let Some(owed) = derived.owed.get(source) else {
                continue;
            };
            let totals = self.book.totals.entry(owed.currency).or_default();
            totals.credit(-*amount, owed.available_at, now_ms);
            totals.put_on_hold(*amount);
        }
    }
}

/// The note on a held customer's ledger entries.
pub const HELD_NOTE: &str = "held: fast_signup";

/// What a customer contributes to its report cell: a rejected customer's
/// commissions were taken back, so they are not shown as earned.
pub fn counts_of(customer: &Customer, derived: &Derived) -> ConversionCounts {
    let mut counts = derived.counts.clone();
    if customer.is_rejected() {
        counts.commission.clear();
    }
    counts
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

/// Adds a payment, refund or cancel to the customer's events.
fn record_step(customer: &mut Customer, key: &EventKey, kind: &EventKind) {
    match kind {
        EventKind::Payment {
            amount,
            currency,
            period,
        } => customer.payments.push(PaymentEvent {
            key: key.clone(),
            amount: *amount,
            currency: *currency,
            period: *period,
        }),
        EventKind::Refund {
            payment,
            amount,
            currency,
        } => customer.refunds.push(RefundEvent {
            key: key.clone(),
            payment: payment.as_str().to_owned(),
            amount: *amount,
            currency: *currency,
        }),
        EventKind::Cancel => customer.cancels.push(key.clone()),
        // Taken by `take_signup`.
        EventKind::Signup { .. } => {}
    }
}
