//! The book's rules on one partner, through a store kept in a few maps.

use super::*;
use crate::conversions::customer::DAY_MS;
use crate::conversions::events::AttributionRef;
use crate::conversions::money::{Billing, Period};
use crate::ids::{CustomerId, EventId, PartnerId};
use crate::webhooks::outbox::{self, OutboxEvent};

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn rules(hold_days: u32) -> Rules {
    let tier = |name: &str, min: &str, rate: &str, recent| Tier {
        name: name.into(),
        min_arr: d(min),
        rate: d(rate),
        needs_recent_customer: recent,
    };
    Rules {
        tiers: vec![
            tier("bronze", "0", "0.20", false),
            tier("silver", "5000", "0.22", false),
            tier("gold", "20000", "0.25", true),
        ],
        hold_days,
        min_click_age_ms: 0,
        payout_minimum: [(Currency::USD, d("50"))].into(),
    }
}

const BASE_MS: i64 = 1_790_000_000_000;

fn at(day: i64) -> DateTime<Utc> {
    time(BASE_MS + day * DAY_MS)
}

fn acme() -> PartnerId {
    PartnerId::parse("acme").unwrap()
}

fn referral() -> Referral {
    Referral {
        partner: acme(),
        campaign: "spring".into(),
        term: None,
        click_at: BASE_MS / 1000,
        found: None,
    }
}

fn signup(id: &str, customer: &str, billing: Billing, day: i64) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        customer: CustomerId::parse(customer).unwrap(),
        at: at(day),
        kind: EventKind::Signup {
            billing,
            attribution: AttributionRef::ClickId("x".into()),
        },
    }
}

fn payment(id: &str, customer: &str, amount: &str, day: i64) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        customer: CustomerId::parse(customer).unwrap(),
        at: at(day),
        kind: EventKind::Payment {
            amount: d(amount),
            currency: Currency::USD,
            period: Period::Month,
        },
    }
}

fn refund(id: &str, customer: &str, paid: &str, amount: &str, day: i64) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        customer: CustomerId::parse(customer).unwrap(),
        at: at(day),
        kind: EventKind::Refund {
            payment: EventId::parse(paid).unwrap(),
            amount: d(amount),
            currency: Currency::USD,
        },
    }
}

/// A partner's book kept the way the stores keep it.
#[derive(Default)]
struct Kept {
    book: Book,
    version: u64,
    customers: BTreeMap<String, Customer>,
    cells: BTreeMap<ConversionCell, ConversionCounts>,
    history: BTreeMap<String, i64>,
    ledger: Vec<LedgerEntry>,
}

impl Kept {
    fn view(&self, request: &BookRequest) -> BookView {
        BookView {
            book: self.book.clone(),
            version: self.version,
            customers: request
                .customers
                .iter()
                .filter_map(|c| Some((c.clone(), self.customers.get(c)?.clone())))
                .collect(),
            cells: request
                .cells
                .iter()
                .filter_map(|c| Some((c.clone(), self.cells.get(c)?.clone())))
                .collect(),
            history: request.history_from.map(|from| {
                History::from_members(
                    from,
                    self.history
                        .iter()
                        .filter(|(_, at)| **at >= from)
                        .map(|(m, at)| (m.as_str(), *at)),
                )
            }),
            payouts: BTreeMap::new(),
        }
    }

    fn commit(&mut self, changes: &Changes) {
        self.book = changes.book.clone();
        for c in &changes.customers {
            self.customers.insert(c.id.clone(), c.clone());
        }
        self.cells.extend(changes.cells.iter().cloned());
        for change in &changes.history {
            match change {
                HistoryChange::Add(member, at) => self.history.insert(member.clone(), *at),
                HistoryChange::Remove(member, _) => self.history.remove(member),
            };
        }
        self.ledger.extend(changes.entries.iter().cloned());
        self.version += 1;
    }

    /// Applies `events` as one batch, at `now`; answers the webhook
    /// events the step reports.
    fn apply(&mut self, events: &[Event], rules: &Rules, now: DateTime<Utc>) -> Vec<OutboxEvent> {
        let referral = referral();
        let incoming: Vec<Incoming<'_>> = events
            .iter()
            .map(|event| Incoming {
                event,
                referral: &referral,
            })
            .collect();
        let mut request = request_for(&incoming);
        loop {
            let view = self.view(&request);
            let before = outbox::Before::of(&view, rules, now);
            match apply(view, &request, &incoming, rules, now.timestamp_millis()) {
                Applied::Load(more) => request = more,
                Applied::Done(changes, _) => {
                    self.commit(&changes);
                    return outbox::events(&acme(), &before, &changes, rules, now);
                }
            }
        }
    }

    /// Net ledger amount per source id.
    fn net(&self) -> BTreeMap<String, Decimal> {
        let mut net: BTreeMap<String, Decimal> = BTreeMap::new();
        for entry in &self.ledger {
            *net.entry(entry.id.clone()).or_default() += entry.amount;
        }
        net.retain(|_, v| !v.is_zero());
        net
    }

    fn rates(&self) -> BTreeMap<String, Decimal> {
        self.customers
            .iter()
            .filter_map(|(id, c)| Some((id.clone(), c.signup.as_ref()?.rate)))
            .collect()
    }
}

#[test]
fn twelve_monthly_payments_of_1000_at_20_percent_earn_2400() {
    let rules = rules(0);
    let mut kept = Kept::default();
    let mut events = vec![signup("s1", "c1", Billing::Referral, 0)];
    for month in 0..12 {
        events.push(payment(&format!("p{month}"), "c1", "1000", month * 30));
    }
    kept.apply(&events, &rules, at(400));
    assert_eq!(kept.book.balances(at(400))[0].available, d("2400"));
    assert_eq!(kept.book.arr, d("9600"));
    assert_eq!(kept.ledger.len(), 12);
}

#[test]
fn the_rate_is_locked_at_signup_and_new_tiers_apply_to_new_customers() {
    let rules = rules(0);
    let mut kept = Kept::default();
    kept.apply(
        &[
            signup("s1", "c1", Billing::Reseller, 0),
            payment("p1", "c1", "1000", 1),
        ],
        &rules,
        at(400),
    );
    assert_eq!(kept.book.arr, d("12000"));
    assert!(kept.ledger.is_empty(), "resellers earn no commission");
    kept.apply(&[signup("s2", "c2", Billing::Referral, 2)], &rules, at(400));
    assert_eq!(kept.rates()["c2"], d("0.22"), "silver from 5,000 ARR");
    assert_eq!(
        kept.rates()["c1"],
        d("0.20"),
        "the first customer keeps bronze"
    );
}

/// The case a second worker made: a signup applied before the payment
/// that, earlier in time, made the partner silver.
#[test]
fn a_late_payment_rerates_later_signups_and_posts_adjustments() {
    let rules = rules(0);
    let mut late = Kept::default();
    late.apply(
        &[
            signup("s1", "c1", Billing::Reseller, 0),
            signup("s2", "c2", Billing::Referral, 2),
            payment("p2", "c2", "100", 3),
        ],
        &rules,
        at(400),
    );
    assert_eq!(late.rates()["c2"], d("0.20"));
    late.apply(&[payment("p1", "c1", "1000", 1)], &rules, at(400));
    assert_eq!(late.rates()["c2"], d("0.22"));
    let kinds: Vec<EntryKind> = late.ledger.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![EntryKind::Commission, EntryKind::Adjustment]);
    assert_eq!(late.ledger[1].amount, d("2"));
    assert_eq!(late.ledger[1].id, "p2");

    let mut in_order = Kept::default();
    in_order.apply(
        &[
            signup("s1", "c1", Billing::Reseller, 0),
            payment("p1", "c1", "1000", 1),
            signup("s2", "c2", Billing::Referral, 2),
            payment("p2", "c2", "100", 3),
        ],
        &rules,
        at(400),
    );
    assert_eq!(late.net(), in_order.net());
    assert_eq!(late.book.arr, in_order.book.arr);
    assert_eq!(late.book.balances(at(400)), in_order.book.balances(at(400)));
}

/// A small deterministic shuffle, so the test needs no generator crate.
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (state >> 33) as usize % (i + 1);
        out.swap(i, j);
    }
    out
}

#[test]
fn any_delivery_order_and_batching_gives_the_same_money() {
    let rules = rules(0);
    let events = vec![
        signup("s1", "c1", Billing::Reseller, 0),
        payment("p1", "c1", "2000", 1),
        signup("s2", "c2", Billing::Referral, 2),
        payment("p2", "c2", "1000", 3),
        refund("r1", "c2", "p2", "333.33", 4),
        refund("r2", "c2", "p2", "333.33", 5),
        signup("s3", "c3", Billing::Referral, 6),
        signup("s0", "c3", Billing::Reseller, 5),
        payment("p3", "c3", "500", 7),
        Event {
            id: EventId::parse("x1").unwrap(),
            customer: CustomerId::parse("c1").unwrap(),
            at: at(8),
            kind: EventKind::Cancel,
        },
        signup("s4", "c4", Billing::Referral, 9),
        payment("p4", "c4", "10.01", 10),
    ];
    let mut reference = Kept::default();
    reference.apply(&events, &rules, at(400));
    for seed in 0..200 {
        let order = shuffled(&events, seed);
        let mut kept = Kept::default();
        let size = 1 + (seed as usize % 4);
        for chunk in order.chunks(size) {
            kept.apply(chunk, &rules, at(400));
        }
        // Delivered again, late: changes nothing.
        kept.apply(&order[..3], &rules, at(400));
        assert_eq!(kept.net(), reference.net(), "seed {seed}");
        assert_eq!(kept.rates(), reference.rates(), "seed {seed}");
        assert_eq!(kept.book.arr, reference.book.arr, "seed {seed}");
        assert_eq!(kept.cells, reference.cells, "seed {seed}");
        assert_eq!(
            kept.book.balances(at(400)),
            reference.book.balances(at(400)),
            "seed {seed}"
        );
    }
}

#[test]
fn a_future_payments_commission_is_pending_and_its_refund_cancels_it() {
    let rules = rules(0);
    let mut kept = Kept::default();
    kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "300", 30),
        ],
        &rules,
        at(1),
    );
    let balance = &kept.book.balances(at(1))[0];
    assert_eq!((balance.pending, balance.available), (d("60"), d("0")));
    kept.apply(&[refund("r1", "c1", "p1", "300", 2)], &rules, at(2));
    let balance = &kept.book.balances(at(2))[0];
    assert_eq!((balance.pending, balance.available), (d("0"), d("0")));
    assert_eq!(
        payout(&kept.book, &rules, true, Currency::USD, at(2)).unwrap_err(),
        PayoutRefusal::NothingAvailable(Currency::USD)
    );
    let balance = &kept.book.balances(at(31))[0];
    assert_eq!((balance.pending, balance.available), (d("0"), d("0")));
}

#[test]
fn commissions_wait_hold_days_and_payouts_need_the_minimum_and_an_email() {
    let rules = rules(30);
    let mut kept = Kept::default();
    kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "200", 1),
        ],
        &rules,
        at(2),
    );
    let balance = &kept.book.balances(at(2))[0];
    assert_eq!((balance.pending, balance.available), (d("40"), d("0")));
    assert_eq!(
        payout(&kept.book, &rules, true, Currency::USD, at(31)).unwrap_err(),
        PayoutRefusal::BelowMinimum {
            currency: Currency::USD,
            available: d("40"),
            minimum: d("50")
        }
    );
    kept.apply(&[payment("p2", "c1", "50", 2)], &rules, at(2));
    assert_eq!(
        payout(&kept.book, &rules, false, Currency::USD, at(40)).unwrap_err(),
        PayoutRefusal::NoPaypalEmail
    );
    assert!(matches!(
        payout(&kept.book, &rules, true, "EUR".parse().unwrap(), at(40)),
        Err(PayoutRefusal::CurrencyNotPaid(_))
    ));
    let requested = payout(&kept.book, &rules, true, Currency::USD, at(40)).unwrap();
    kept.commit(&requested);
    assert_eq!(requested.entries[0].amount, d("-50"));
    assert_eq!(requested.entries[0].kind, EntryKind::PayoutRequested);
    let payout = &requested.payouts[0];
    assert_eq!(
        (payout.amount, payout.status),
        (d("50.00"), PayoutStatus::Requested)
    );
    let balance = &kept.book.balances(at(40))[0];
    assert_eq!(
        (balance.available, balance.in_payout, balance.paid),
        (d("0"), d("50"), d("0"))
    );
    let sent = Settlement::Paid {
        reference: "7XK".into(),
    };
    let paid = settle_payout(&kept.book, payout, &sent, at(40)).unwrap();
    kept.commit(&paid);
    assert_eq!(paid.entries[0].kind, EntryKind::PayoutPaid);
    assert_eq!(paid.entries[0].note.as_deref(), Some("7XK"));
    assert_eq!(paid.payouts[0].status, PayoutStatus::Paid);
    let balance = &kept.book.balances(at(40))[0];
    assert_eq!(
        (
            balance.pending,
            balance.available,
            balance.in_payout,
            balance.paid
        ),
        (d("0"), d("0"), d("0"), d("50"))
    );
    // Only a requested payout settles.
    for again in [sent, Settlement::Failed { reason: "x".into() }] {
        let conflict = settle_payout(&kept.book, &paid.payouts[0], &again, at(41)).unwrap_err();
        assert_eq!(conflict.current, "paid");
    }
    // A clawback after the payout takes the balance below zero.
    kept.apply(&[refund("r1", "c1", "p1", "200", 41)], &rules, at(41));
    assert_eq!(kept.book.balances(at(41))[0].available, d("-40"));
}

/// A request with or without a PayPal email, as the API makes it.
fn payout(
    book: &Book,
    rules: &Rules,
    has_email: bool,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Changes, PayoutRefusal> {
    let partner = PartnerId::parse("acme").unwrap();
    let id = PayoutId::new(now.timestamp_millis());
    let email = has_email.then_some("pay@acme.example");
    request_payout(book, rules, &partner, email, &id, currency, now)
}

#[test]
fn a_failed_payout_returns_its_amount_to_available() {
    let rules = rules(0);
    let mut kept = Kept::default();
    kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "300", 1),
        ],
        &rules,
        at(2),
    );
    let requested = payout(&kept.book, &rules, true, Currency::USD, at(2)).unwrap();
    kept.commit(&requested);
    let bounced = Settlement::Failed {
        reason: "the PayPal account is closed".into(),
    };
    let failed = settle_payout(&kept.book, &requested.payouts[0], &bounced, at(3)).unwrap();
    kept.commit(&failed);
    assert_eq!(failed.entries[0].amount, d("60.00"));
    assert_eq!(failed.payouts[0].status, PayoutStatus::Failed);
    let balance = &kept.book.balances(at(3))[0];
    assert_eq!(
        (balance.available, balance.in_payout, balance.paid),
        (d("60.00"), d("0.00"), d("0.00"))
    );
    let paid = Settlement::Paid {
        reference: "late".into(),
    };
    let conflict = settle_payout(&kept.book, &failed.payouts[0], &paid, at(4)).unwrap_err();
    assert_eq!((conflict.current, conflict.wanted), ("failed", "paid"));
    // The amount can be requested again.
    assert!(payout(&kept.book, &rules, true, Currency::USD, at(4)).is_ok());
}

#[test]
fn gold_needs_a_new_customer_in_the_last_twelve_months() {
    let rules = rules(0);
    let book = Book {
        arr: d("25000"),
        signups: vec![at(0).timestamp_millis()],
        ..Book::default()
    };
    assert_eq!(book.tier(&rules, at(100)).name, "gold");
    assert_eq!(book.tier(&rules, at(400)).name, "silver");
}

#[test]
fn a_second_signup_of_a_customer_changes_nothing() {
    let rules = rules(0);
    let mut kept = Kept::default();
    kept.apply(&[signup("s1", "c1", Billing::Referral, 0)], &rules, at(1));
    kept.apply(&[signup("s2", "c1", Billing::Reseller, 1)], &rules, at(1));
    let c = &kept.customers["c1"];
    assert_eq!(c.signup.as_ref().unwrap().key.id, "s1");
    assert_eq!(kept.book.signups.len(), 1);
    // An earlier signup arriving late is the customer's first: it counts.
    kept.apply(&[signup("s0", "c1", Billing::Reseller, -1)], &rules, at(1));
    let c = &kept.customers["c1"];
    assert_eq!(c.signup.as_ref().unwrap().key.id, "s0");
    assert_eq!(kept.book.signups, vec![at(-1).timestamp_millis()]);
}

/// Found by the property test: a signup rerated twice in one batch, then
/// replaced by an earlier one, left its first record in the history.
#[test]
fn every_split_of_a_late_signup_scenario_gives_the_same_rates() {
    let rules = rules(0);
    let ms = |t: i64| time(t);
    let ev = |id: &str, c: &str, t: i64, kind: EventKind| Event {
        id: EventId::parse(id).unwrap(),
        customer: CustomerId::parse(c).unwrap(),
        at: ms(t),
        kind,
    };
    let su = || EventKind::Signup {
        billing: Billing::Referral,
        attribution: AttributionRef::ClickId("x".into()),
    };
    let pm = |cents: i64, yearly: bool| EventKind::Payment {
        amount: Decimal::new(cents, 2),
        currency: Currency::USD,
        period: if yearly { Period::Year } else { Period::Month },
    };
    let events = vec![
        ev("e23", "c4", 1791641600000, su()),
        ev("e37", "c1", 1792246400900, pm(479057, true)),
        ev("e12", "c1", 1790000000000, pm(52084, false)),
        ev("e28", "c1", 1792937600001, pm(460191, true)),
        ev("e33", "c1", 1791814400000, pm(367954, false)),
        ev("e11", "c1", 1791123200000, pm(1, false)),
        ev("e25", "c1", 1790000000000, su()),
        ev("e20", "c1", 1791641600000, pm(52084, false)),
        ev("e27", "c4", 1791555200900, su()),
        ev("e10", "c1", 1790000000000, su()),
    ];
    let order = [
        "e23", "e37", "e12", "e28", "e33", "e11", "e25", "e20", "e27", "e10",
    ];
    let events: Vec<Event> = order
        .iter()
        .map(|id| {
            events
                .iter()
                .find(|e| e.id.as_str() == *id)
                .unwrap()
                .clone()
        })
        .collect();
    let mut reference = Kept::default();
    reference.apply(&events, &rules, at(400));
    for mask in 0..(1u32 << (events.len() - 1)) {
        let mut kept = Kept::default();
        let mut chunk = Vec::new();
        for (i, e) in events.iter().enumerate() {
            chunk.push(e.clone());
            if i + 1 == events.len() || mask & (1 << i) != 0 {
                kept.apply(&chunk, &rules, at(400));
                chunk.clear();
            }
        }
        assert_eq!(kept.rates(), reference.rates(), "mask {mask:b}");
    }
}

#[test]
fn a_conversion_cell_is_stored_under_its_key_and_read_back() {
    let cell = ConversionCell {
        day: "2026-11-23".parse().unwrap(),
        campaign: "spring".into(),
        term: String::new(),
    };
    assert_eq!(cell.key(), "2026-11-23\tspring\t");
    assert_eq!(ConversionCell::parse_key(&cell.key()), Some(cell));
    for bad in [
        "",
        "2026-11-23",
        "2026-11-23\tspring",
        "23/11/2026\tspring\t",
    ] {
        assert_eq!(ConversionCell::parse_key(bad), None, "{bad:?}");
    }
}

mod holds;
mod webhooks;
