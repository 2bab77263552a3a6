//! Property: random streams of signups, payments, refunds and cancels over
//! several partners and currencies, with duplicates and reordering, applied
//! by the real worker to the embedded store and to a real Redis, leave every
//! balance, ARR, tier and ledger exactly as a small independent model says.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Months, Utc};
use common::redis_server::RedisServer;
use lastclick::config::Config;
use lastclick::cookie::{ClickId, VisitorId};
use lastclick::events::{AttributionRef, Event, EventKind};
use lastclick::ids::PartnerId;
use lastclick::metrics::Metrics;
use lastclick::money::{Billing, Period};
use lastclick::store::embedded::EmbeddedStore;
use lastclick::store::redis::RedisStore;
use lastclick::store::{Click, Delivery, Partner, Store};
use lastclick::worker::Worker;
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};

const PARTNERS: usize = 2;
const CUSTOMERS: usize = 6;
const BASE: i64 = 1_790_000_000;
const HOUR: i64 = 3600;

/// One step of a generated stream, before it becomes an event.
#[derive(Debug, Clone)]
enum Step {
    Signup {
        customer: usize,
        partner: Option<usize>,
        reseller: bool,
    },
    Payment {
        customer: usize,
        cents: i64,
        jpy: bool,
        yearly: bool,
    },
    Refund {
        customer: usize,
        payment: usize,
        percent: i64,
    },
    Cancel {
        customer: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let customer = 0..CUSTOMERS;
    prop_oneof![
        2 => (customer.clone(), proptest::option::weighted(0.85, 0..PARTNERS), any::<bool>())
            .prop_map(|(customer, partner, reseller)| Step::Signup { customer, partner, reseller }),
        5 => (customer.clone(), 1..500_000i64, proptest::bool::weighted(0.2), proptest::bool::weighted(0.3))
            .prop_map(|(customer, cents, jpy, yearly)| Step::Payment { customer, cents, jpy, yearly }),
        1 => (customer.clone(), 0..40usize, 1..=120i64)
            .prop_map(|(customer, payment, percent)| Step::Refund { customer, payment, percent }),
        1 => customer.prop_map(|customer| Step::Cancel { customer }),
    ]
}

/// Steps, then local reordering (swaps of neighbours) and duplicates (an
/// earlier event delivered again later).
fn stream() -> impl Strategy<Value = (Vec<Step>, Vec<usize>, Vec<(usize, usize)>)> {
    prop::collection::vec(step(), 1..40).prop_flat_map(|steps| {
        let n = steps.len();
        (
            Just(steps),
            prop::collection::vec(0..n, 0..n),
            prop::collection::vec((0..n, 0..=n), 0..6),
        )
    })
}

fn d2(cents: i64, scale: u32) -> Decimal {
    Decimal::new(cents, scale)
}

fn round(amount: Decimal, digits: u32) -> Decimal {
    amount.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero)
}

/// Builds the events of a case; ids are prefixed so cases share a store.
fn events(case: &str, steps: &[Step], clicks: &[ClickId]) -> Vec<Event> {
    let mut payments: HashMap<usize, Vec<(String, Decimal, &'static str)>> = HashMap::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let id = format!("{case}e{i}");
            let at = DateTime::from_timestamp(BASE + i as i64 * 24 * HOUR, 0).unwrap();
            let (customer, kind) = match step {
                Step::Signup {
                    customer,
                    partner,
                    reseller,
                } => {
                    let attribution = match partner {
                        Some(p) => AttributionRef::ClickId(clicks[*p].to_string()),
                        None => AttributionRef::ClickId(ClickId([7; 16]).to_string()),
                    };
                    let billing = if *reseller {
                        Billing::Reseller
                    } else {
                        Billing::Referral
                    };
                    (
                        *customer,
                        EventKind::Signup {
                            billing,
                            attribution,
                        },
                    )
                }
                Step::Payment {
                    customer,
                    cents,
                    jpy,
                    yearly,
                } => {
                    let (amount, currency) = if *jpy {
                        (d2(*cents, 0), "JPY")
                    } else {
                        (d2(*cents, 2), "USD")
                    };
                    payments
                        .entry(*customer)
                        .or_default()
                        .push((id.clone(), amount, currency));
                    let period = if *yearly { Period::Year } else { Period::Month };
                    (
                        *customer,
                        EventKind::Payment {
                            amount,
                            currency: currency.into(),
                            period,
                        },
                    )
                }
                Step::Refund {
                    customer,
                    payment,
                    percent,
                } => {
                    let made = payments.get(customer).cloned().unwrap_or_default();
                    match made.get(*payment % made.len().max(1)) {
                        Some((paid, amount, currency)) => {
                            let digits = if *currency == "JPY" { 0 } else { 2 };
                            let part = round(*amount * d2(*percent, 2), digits).max(d2(1, digits));
                            (
                                *customer,
                                EventKind::Refund {
                                    payment: paid.clone(),
                                    amount: part,
                                    currency: (*currency).into(),
                                },
                            )
                        }
                        None => (*customer, EventKind::Cancel),
                    }
                }
                Step::Cancel { customer } => (*customer, EventKind::Cancel),
            };
            Event {
                id,
                customer: format!("{case}c{customer}"),
                at,
                kind,
            }
        })
        .collect()
}

/// The order events are delivered in: neighbours swapped, then earlier
/// events delivered again.
fn delivery_order(events: &[Event], swaps: &[usize], repeats: &[(usize, usize)]) -> Vec<Event> {
    let mut order: Vec<Event> = events.to_vec();
    for &i in swaps {
        if i + 1 < order.len() {
            order.swap(i, i + 1);
        }
    }
    for &(which, to) in repeats {
        let again = order[which % order.len()].clone();
        order.insert(to.min(order.len()), again);
    }
    order
}

// ---- the model ----------------------------------------------------------

#[derive(Default, Debug)]
struct ModelCustomer {
    partner: usize,
    rate: Decimal,
    reseller: bool,
    latest: Option<(i64, String, Decimal, String, Period)>,
    cancelled: Option<i64>,
}

#[derive(Default, Debug)]
struct ModelPayment {
    customer: String,
    amount: Decimal,
    currency: String,
    commission: Decimal,
    refunded: Decimal,
    clawed: Decimal,
}

#[derive(Default, Debug)]
struct Model {
    seen: std::collections::HashSet<String>,
    claimed: HashMap<String, Option<usize>>,
    customers: HashMap<String, ModelCustomer>,
    payments: HashMap<String, ModelPayment>,
    signups: Vec<Vec<i64>>,
    available: Vec<BTreeMap<String, Decimal>>,
    entries: Vec<usize>,
    entry_ids: Vec<Vec<String>>,
}

fn digits(currency: &str) -> u32 {
    if currency == "JPY" {
        0
    } else {
        2
    }
}

impl Model {
    fn new() -> Self {
        Model {
            signups: vec![Vec::new(); PARTNERS],
            available: vec![BTreeMap::new(); PARTNERS],
            entries: vec![0; PARTNERS],
            entry_ids: vec![Vec::new(); PARTNERS],
            ..Model::default()
        }
    }

    fn arr(&self, partner: usize) -> Decimal {
        self.customers
            .values()
            .filter(|c| c.partner == partner)
            .map(|c| match &c.latest {
                Some((at, _, amount, currency, period))
                    if currency == "USD" && c.cancelled.is_none_or(|x| x < *at) =>
                {
                    let yearly = match period {
                        Period::Month => amount * Decimal::from(12),
                        Period::Year => *amount,
                    };
                    if c.reseller {
                        yearly
                    } else {
                        yearly * (Decimal::ONE - c.rate)
                    }
                }
                _ => Decimal::ZERO,
            })
            .sum()
    }

    fn tier(&self, partner: usize, at: i64) -> (&'static str, Decimal) {
        let now = DateTime::from_timestamp(at, 0).unwrap();
        let since = now.checked_sub_months(Months::new(12)).unwrap().timestamp();
        let recent = self.signups[partner].iter().any(|&s| s > since && s <= at);
        let arr = self.arr(partner);
        if arr >= Decimal::from(20_000) && recent {
            ("gold", d2(25, 2))
        } else if arr >= Decimal::from(5_000) {
            ("silver", d2(22, 2))
        } else {
            ("bronze", d2(20, 2))
        }
    }

    /// Applies `event` unless it had an effect before: an event that
    /// changed nothing (a payment before its customer's signup) leaves no
    /// trace, and delivered again it is applied as new.
    fn apply(&mut self, event: &Event) {
        if self.seen.contains(&event.id) {
            return;
        }
        let at = event.at.timestamp();
        match &event.kind {
            EventKind::Signup {
                billing,
                attribution,
            } => {
                if self.claimed.contains_key(&event.customer) {
                    return;
                }
                let AttributionRef::ClickId(click) = attribution else {
                    unreachable!()
                };
                let partner = CLICK_PARTNER.with(|m| m.borrow().get(click).copied());
                self.claimed.insert(event.customer.clone(), partner);
                let Some(partner) = partner else { return };
                self.seen.insert(event.id.clone());
                let rate = self.tier(partner, at).1;
                self.signups[partner].push(at);
                self.customers.insert(
                    event.customer.clone(),
                    ModelCustomer {
                        partner,
                        rate,
                        reseller: *billing == Billing::Reseller,
                        ..ModelCustomer::default()
                    },
                );
            }
            EventKind::Payment {
                amount,
                currency,
                period,
            } => {
                let Some(c) = self.customers.get_mut(&event.customer) else {
                    return;
                };
                self.seen.insert(event.id.clone());
                if c.latest
                    .as_ref()
                    .is_none_or(|l| (l.0, l.1.as_str()) < (at, event.id.as_str()))
                {
                    c.latest = Some((at, event.id.clone(), *amount, currency.clone(), *period));
                }
                let commission = if c.reseller {
                    Decimal::ZERO
                } else {
                    round(amount * c.rate, digits(currency))
                };
                let partner = c.partner;
                if !commission.is_zero() {
                    *self.available[partner].entry(currency.clone()).or_default() += commission;
                    self.entries[partner] += 1;
                    self.entry_ids[partner].push(event.id.clone());
                }
                self.payments.insert(
                    event.id.clone(),
                    ModelPayment {
                        customer: event.customer.clone(),
                        amount: *amount,
                        currency: currency.clone(),
                        commission,
                        ..ModelPayment::default()
                    },
                );
            }
            EventKind::Refund {
                payment,
                amount,
                currency,
            } => {
                let Some(c) = self.customers.get(&event.customer) else {
                    return;
                };
                let partner = c.partner;
                let Some(p) = self.payments.get_mut(payment) else {
                    return;
                };
                if p.customer != event.customer || &p.currency != currency {
                    return;
                }
                self.seen.insert(event.id.clone());
                p.refunded = (p.refunded + amount).min(p.amount);
                let owed = if p.refunded == p.amount {
                    p.commission
                } else {
                    round(p.commission * p.refunded / p.amount, digits(currency))
                };
                let claw = owed - p.clawed;
                p.clawed = owed;
                if !claw.is_zero() {
                    *self.available[partner].entry(currency.clone()).or_default() -= claw;
                    self.entries[partner] += 1;
                    self.entry_ids[partner].push(event.id.clone());
                }
            }
            EventKind::Cancel => {
                if let Some(c) = self.customers.get_mut(&event.customer) {
                    self.seen.insert(event.id.clone());
                    if c.cancelled.is_none_or(|x| x < at) {
                        c.cancelled = Some(at);
                    }
                }
            }
        }
    }
}

thread_local! {
    /// Click id → partner index, for the model's attribution.
    static CLICK_PARTNER: std::cell::RefCell<HashMap<String, usize>> = Default::default();
}

// ---- running a case -----------------------------------------------------

static CASES: AtomicUsize = AtomicUsize::new(0);

fn config() -> Config {
    let mut config = Config::load_with_env(None, Vec::new()).unwrap();
    config.cookie.secrets = vec!["model-secret-0123456789".into()];
    config
}

async fn run_case(
    store: Arc<dyn Store>,
    steps: Vec<Step>,
    swaps: Vec<usize>,
    repeats: Vec<(usize, usize)>,
    batch: usize,
) {
    let case = format!("k{}", CASES.fetch_add(1, Ordering::Relaxed));
    let partners: Vec<String> = (0..PARTNERS).map(|p| format!("{case}p{p}")).collect();
    let mut clicks = Vec::new();
    for (p, id) in partners.iter().enumerate() {
        let partner = Partner {
            id: PartnerId::parse(id).unwrap(),
            name: id.clone(),
            paypal_email: None,
            disabled: false,
            token_hash: format!("{case}{p}"),
            created_at: Utc::now(),
        };
        store.insert_partner(&partner).await.unwrap();
        let click = Click {
            click_id: ClickId::random(),
            visitor_id: VisitorId::random(),
            partner: id.as_str().into(),
            campaign: "default_link".into(),
            term: None,
            at: BASE - HOUR,
        };
        store
            .record_clicks(std::slice::from_ref(&click))
            .await
            .unwrap();
        CLICK_PARTNER.with(|m| m.borrow_mut().insert(click.click_id.to_string(), p));
        clicks.push(click.click_id);
    }
    let events = events(&case, &steps, &clicks);
    let order = delivery_order(&events, &swaps, &repeats);
    let worker = Worker::new(Arc::clone(&store), &config(), Arc::new(Metrics::new()));
    let mut model = Model::new();
    for event in &order {
        model.apply(event);
    }
    // Delivered in batches of `batch` as the worker's loop takes them;
    // queued long ago, so nothing waits for a signup that may be in flight.
    for (n, chunk) in order.chunks(batch).enumerate() {
        let deliveries: Vec<Delivery> = chunk
            .iter()
            .enumerate()
            .map(|(i, event)| Delivery {
                delivery: format!("{n}-{i}"),
                event: event.clone(),
                queued_at_ms: 0,
            })
            .collect();
        let done = worker.apply_batch(deliveries).await;
        assert_eq!(done.len(), chunk.len(), "every event finishes");
    }
    let now = BASE + 200 * 24 * HOUR;
    let rules = lastclick::worker::rules(&config());
    for (p, id) in partners.iter().enumerate() {
        let view = store.load_book(id, None, None, None, "").await.unwrap();
        assert_eq!(
            view.book.arr.normalize(),
            model.arr(p).normalize(),
            "ARR of {id}"
        );
        assert_eq!(
            view.book
                .tier(&rules, DateTime::from_timestamp(now, 0).unwrap())
                .name,
            model.tier(p, now).0,
            "tier of {id}"
        );
        let balances: BTreeMap<String, Decimal> = view
            .book
            .balances(DateTime::from_timestamp(now, 0).unwrap())
            .into_iter()
            .map(|b| (b.currency, b.available.normalize()))
            .filter(|(_, v)| !v.is_zero())
            .collect();
        let expected: BTreeMap<String, Decimal> = model.available[p]
            .iter()
            .map(|(c, v)| (c.clone(), v.normalize()))
            .filter(|(_, v)| !v.is_zero())
            .collect();
        assert_eq!(balances, expected, "balances of {id}");
        let ledger = store.ledger(id, None, 1000).await.unwrap();
        let mut ids: Vec<String> = ledger.iter().map(|e| e.id.clone()).collect();
        ids.reverse();
        assert_eq!(
            ids,
            model.entry_ids[p],
            "ledger of {id}; delivered: {:?}",
            order
                .iter()
                .map(|e| (&e.id, &e.customer, e.kind.name()))
                .collect::<Vec<_>>()
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_embedded_store_matches_the_model((steps, swaps, repeats) in stream(), batch in 1..50usize) {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new(Duration::from_secs(200 * 86_400)));
        runtime().block_on(run_case(store, steps, swaps, repeats, batch));
    }
}

#[test]
fn redis_matches_the_model() {
    let server = RedisServer::start();
    let rt = runtime();
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(RedisStore::connect(
            &server.url(),
            false,
            Duration::from_secs(200 * 86_400),
        ))
        .unwrap(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(stream(), 1..50usize),
            |((steps, swaps, repeats), batch)| {
                rt.block_on(run_case(Arc::clone(&store), steps, swaps, repeats, batch));
                Ok(())
            },
        )
        .unwrap();
}
