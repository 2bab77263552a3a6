//! Property: the money is a function of the set of events. Random streams of
//! signups, payments, refunds and cancels over several partners and
//! currencies, with times to the millisecond, are delivered in a random
//! order with duplicates, in random batches, to one, two or three
//! concurrent workers that are killed between any two store operations;
//! the embedded store and a real Redis must then hold exactly what a small
//! independent model computes by applying the events once each, in the
//! order of their time (then id). With `attribution.min_click_age` set so
//! that the signups of the first 20 days are too soon after their click,
//! those customers' commissions must all be on hold, the others' available.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Months, NaiveDate, Utc};
use common::redis_server::RedisServer;
use lastclick::config::Config;
use lastclick::conversions::book::BookRequest;
use lastclick::conversions::customer::Referral;
use lastclick::conversions::events::{AttributionRef, Event, EventKind};
use lastclick::conversions::money::{Billing, Period};
use lastclick::conversions::worker::{Drained, Worker};
use lastclick::ids::{ClickId, VisitorId};
use lastclick::ids::{CustomerId, EventId, PartnerId};
use lastclick::metrics::Metrics;
use lastclick::store::prelude::*;
use lastclick::store::redis::RedisStore;
use lastclick::store::sqlite::SqliteStore;
use lastclick::store::{Click, Delivery, InboxItem, Partner};
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};

const PARTNERS: usize = 2;
const CUSTOMERS: usize = 6;
fn pid(id: &str) -> PartnerId {
    PartnerId::parse(id).unwrap()
}

const BASE_MS: i64 = 1_790_000_000_000;
const DAY_MS: i64 = 86_400_000;
/// Every partner's click, an hour before the first event.
const CLICK_MS: i64 = BASE_MS - 3_600_000;
/// `attribution.min_click_age`: signups in the first 20 days are held.
const MIN_CLICK_AGE_MS: i64 = 3_600_000 + 20 * DAY_MS;

/// One step of a generated stream, before it becomes an event.
#[derive(Debug, Clone)]
enum Step {
    Signup {
        customer: usize,
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

fn step() -> impl Strategy<Value = (Step, i64)> {
    let customer = 0..CUSTOMERS;
    let kind = prop_oneof![
        2 => (customer.clone(), any::<bool>())
            .prop_map(|(customer, reseller)| Step::Signup { customer, reseller }),
        5 => (customer.clone(), 1..500_000i64, proptest::bool::weighted(0.2), proptest::bool::weighted(0.3))
            .prop_map(|(customer, cents, jpy, yearly)| Step::Payment { customer, cents, jpy, yearly }),
        1 => (customer.clone(), 0..40usize, 1..=120i64)
            .prop_map(|(customer, payment, percent)| Step::Refund { customer, payment, percent }),
        1 => customer.prop_map(|customer| Step::Cancel { customer }),
    ];
    // Times within 40 days, many sharing a day, some a millisecond apart.
    let at = (
        0..40i64,
        prop_oneof![Just(0i64), Just(1), Just(900), 0..DAY_MS],
    )
        .prop_map(|(day, ms)| BASE_MS + day * DAY_MS + ms);
    (kind, at)
}

/// A case: the steps with their times, each customer's partner (`None`: a
/// signup with no valid click), and a seed for delivery, batches, workers
/// and kills.
type Case = (Vec<(Step, i64)>, Vec<Option<usize>>, u64);

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(step(), 1..40),
        prop::collection::vec(proptest::option::weighted(0.85, 0..PARTNERS), CUSTOMERS),
        any::<u64>(),
    )
}

fn d(units: i64, scale: u32) -> Decimal {
    Decimal::new(units, scale)
}

fn round(amount: Decimal, digits: u32) -> Decimal {
    amount.round_dp_with_strategy(digits, RoundingStrategy::MidpointAwayFromZero)
}

fn digits(currency: &str) -> u32 {
    if currency == "JPY" {
        0
    } else {
        2
    }
}

/// Builds the events of a case; ids are prefixed so cases share a store.
fn events(
    case: &str,
    steps: &[(Step, i64)],
    partner_of: &[Option<usize>],
    clicks: &[ClickId],
) -> Vec<Event> {
    let mut payments: HashMap<usize, Vec<(String, Decimal, &'static str)>> = HashMap::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, (step, at_ms))| {
            let id = format!("{case}e{i}");
            let (customer, kind) = match step {
                Step::Signup { customer, reseller } => {
                    let click = match partner_of[*customer] {
                        Some(p) => clicks[p].to_string(),
                        None => ClickId([7; 16]).to_string(),
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
                            attribution: AttributionRef::ClickId(click),
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
                        (d(*cents, 0), "JPY")
                    } else {
                        (d(*cents, 2), "USD")
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
                            currency: currency.parse().unwrap(),
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
                            let digits = digits(currency);
                            let part = round(*amount * d(*percent, 2), digits).max(d(1, digits));
                            (
                                *customer,
                                EventKind::Refund {
                                    payment: EventId::parse(paid).unwrap(),
                                    amount: part,
                                    currency: currency.parse().unwrap(),
                                },
                            )
                        }
                        None => (*customer, EventKind::Cancel),
                    }
                }
                Step::Cancel { customer } => (*customer, EventKind::Cancel),
            };
            Event {
                id: EventId::parse(&id).unwrap(),
                customer: CustomerId::parse(&format!("{case}c{customer}")).unwrap(),
                at: DateTime::from_timestamp_millis(*at_ms).unwrap(),
                kind,
            }
        })
        .collect()
}

/// A small generator for the delivery schedule, seeded by the case.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// The events in a random order, with some delivered twice.
fn delivery_order(events: &[Event], dice: &mut Dice) -> Vec<Event> {
    let mut order: Vec<Event> = events.to_vec();
    for i in (1..order.len()).rev() {
        let j = dice.below(i + 1);
        order.swap(i, j);
    }
    for _ in 0..dice.below(6) {
        let again = order[dice.below(order.len())].clone();
        let at = dice.below(order.len() + 1);
        order.insert(at, again);
    }
    order
}

// ---- the model ----------------------------------------------------------

type Key = (i64, String);

#[derive(Debug, Clone)]
struct ModelCustomer {
    rate: Decimal,
    reseller: bool,
    latest: Option<(Key, Decimal, String, Period)>,
    cancelled: Option<Key>,
    paid: bool,
}

#[derive(Debug, Clone)]
struct ModelPayment {
    customer: String,
    amount: Decimal,
    currency: String,
    commission: Decimal,
    refunded: Decimal,
    clawed: Decimal,
}

/// One partner's figures, as the model computes them.
#[derive(Debug, Default)]
struct ModelPartner {
    customers: BTreeMap<String, ModelCustomer>,
    signups: Vec<Key>,
    payments: HashMap<String, ModelPayment>,
    /// Net ledger amount per source event, with its currency.
    net: BTreeMap<String, (Decimal, String)>,
    /// The customer of each event in `net`.
    net_customer: HashMap<String, String>,
    /// Customers whose signup came sooner than `MIN_CLICK_AGE_MS` after
    /// the click: their commissions are on hold.
    held: BTreeSet<String>,
    /// Refunds whose payment has not been applied yet, by payment id.
    waiting: HashMap<String, Vec<Event>>,
}

impl ModelPartner {
    fn arr(&self) -> Decimal {
        self.customers
            .values()
            .map(|c| match &c.latest {
                Some((key, amount, currency, period))
                    if currency == "USD" && c.cancelled.as_ref().is_none_or(|x| x < key) =>
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

    /// The tier at `at` (ms) given what was applied so far.
    fn tier(&self, at: i64) -> (&'static str, Decimal) {
        let since = DateTime::from_timestamp_millis(at)
            .unwrap()
            .checked_sub_months(Months::new(12))
            .unwrap()
            .timestamp_millis();
        let recent = self.signups.iter().any(|(s, _)| *s > since && *s <= at);
        let arr = self.arr();
        if arr >= Decimal::from(20_000) && recent {
            ("gold", d(25, 2))
        } else if arr >= Decimal::from(5_000) {
            ("silver", d(22, 2))
        } else {
            ("bronze", d(20, 2))
        }
    }

    fn signup(&mut self, event: &Event, key: Key, reseller: bool) {
        if key.0 - CLICK_MS < MIN_CLICK_AGE_MS {
            self.held.insert(event.customer.as_str().to_owned());
        }
        let rate = self.tier(key.0).1;
        self.signups.push(key);
        self.customers.insert(
            event.customer.as_str().to_owned(),
            ModelCustomer {
                rate,
                reseller,
                latest: None,
                cancelled: None,
                paid: false,
            },
        );
    }

    fn apply(&mut self, event: &Event, key: Key) {
        match &event.kind {
            EventKind::Signup { .. } => unreachable!("signups are applied apart"),
            EventKind::Payment {
                amount,
                currency,
                period,
            } => {
                // The model keeps its own table of minor units, by code.
                let currency = &currency.to_string();
                let c = self.customers.get_mut(event.customer.as_str()).unwrap();
                c.latest = Some((key, *amount, currency.clone(), *period));
                c.paid = true;
                let commission = if c.reseller {
                    Decimal::ZERO
                } else {
                    round(amount * c.rate, digits(currency))
                };
                self.net
                    .insert(event.id.as_str().to_owned(), (commission, currency.clone()));
                self.net_customer.insert(
                    event.id.as_str().to_owned(),
                    event.customer.as_str().to_owned(),
                );
                self.payments.insert(
                    event.id.as_str().to_owned(),
                    ModelPayment {
                        customer: event.customer.as_str().to_owned(),
                        amount: *amount,
                        currency: currency.clone(),
                        commission,
                        refunded: Decimal::ZERO,
                        clawed: Decimal::ZERO,
                    },
                );
                for refund in self.waiting.remove(event.id.as_str()).unwrap_or_default() {
                    let key = (refund.at.timestamp_millis(), refund.id.as_str().to_owned());
                    self.apply(&refund, key);
                }
            }
            EventKind::Refund {
                payment,
                amount,
                currency,
            } => {
                let currency = &currency.to_string();
                let Some(p) = self.payments.get_mut(payment.as_str()) else {
                    self.waiting
                        .entry(payment.as_str().to_owned())
                        .or_default()
                        .push(event.clone());
                    return;
                };
                if p.customer != event.customer.as_str() || &p.currency != currency {
                    return;
                }
                p.refunded = (p.refunded + amount).min(p.amount);
                let owed = if p.refunded == p.amount {
                    p.commission
                } else {
                    round(p.commission * p.refunded / p.amount, digits(currency))
                };
                let claw = owed - p.clawed;
                p.clawed = owed;
                self.net
                    .insert(event.id.as_str().to_owned(), (-claw, currency.clone()));
                self.net_customer.insert(
                    event.id.as_str().to_owned(),
                    event.customer.as_str().to_owned(),
                );
            }
            EventKind::Cancel => {
                let c = self.customers.get_mut(event.customer.as_str()).unwrap();
                c.cancelled = Some(key);
            }
        }
    }

    /// Net commissions per currency of the customers held (`true`) or
    /// not.
    fn net_of(&self, held: bool) -> BTreeMap<String, Decimal> {
        let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
        for (event, (amount, currency)) in &self.net {
            if self.held.contains(&self.net_customer[event]) == held {
                *sums.entry(currency.clone()).or_default() += amount;
            }
        }
        sums.retain(|_, v| !v.is_zero());
        sums
    }

    fn available(&self) -> BTreeMap<String, Decimal> {
        self.net_of(false)
    }

    fn on_hold(&self) -> BTreeMap<String, Decimal> {
        self.net_of(true)
    }

    /// Every commission, held or not: what the report counts.
    fn earned(&self) -> BTreeMap<String, Decimal> {
        let mut sums = self.available();
        for (currency, amount) in self.on_hold() {
            *sums.entry(currency).or_default() += amount;
        }
        sums.retain(|_, v| !v.is_zero());
        sums
    }

    fn revenue(&self) -> BTreeMap<String, Decimal> {
        let mut sums: BTreeMap<String, Decimal> = BTreeMap::new();
        for p in self.payments.values() {
            *sums.entry(p.currency.clone()).or_default() += p.amount - p.refunded;
        }
        sums
    }
}

/// Applies each distinct event once, in the order of (at, id): a signup
/// (the customer's earliest) first takes the partner's tier as the rate,
/// then the customer's events from before it; a refund waits for its
/// payment.
fn model(events: &[Event], partner_of: &HashMap<String, Option<usize>>) -> Vec<ModelPartner> {
    let mut unique: BTreeMap<Key, &Event> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for event in events {
        if seen.insert(event.id.as_str().to_owned()) {
            unique.insert(
                (event.at.timestamp_millis(), event.id.as_str().to_owned()),
                event,
            );
        }
    }
    let mut partners: Vec<ModelPartner> = (0..PARTNERS).map(|_| ModelPartner::default()).collect();
    let mut before_signup: HashMap<String, Vec<(Key, &Event)>> = HashMap::new();
    for (key, event) in unique {
        let Some(Some(p)) = partner_of.get(event.customer.as_str()) else {
            continue;
        };
        let partner = &mut partners[*p];
        let signed_up = partner.customers.contains_key(event.customer.as_str());
        match &event.kind {
            EventKind::Signup { billing, .. } if !signed_up => {
                partner.signup(event, key, *billing == Billing::Reseller);
                for (key, waited) in before_signup
                    .remove(event.customer.as_str())
                    .unwrap_or_default()
                {
                    partner.apply(waited, key);
                }
            }
            EventKind::Signup { .. } => {}
            _ if !signed_up => before_signup
                .entry(event.customer.as_str().to_owned())
                .or_default()
                .push((key, event)),
            _ => partner.apply(event, key),
        }
    }
    partners
}

// ---- running a case -----------------------------------------------------

static CASES: AtomicUsize = AtomicUsize::new(0);

fn config() -> Config {
    let mut config = Config::load_with_env(None, Vec::new()).unwrap();
    config.cookie.secrets = vec!["model-secret-0123456789".into()];
    // A killed worker's book lock lapses after this.
    config.worker.reclaim_after = Duration::from_millis(50);
    config.attribution.min_click_age = Duration::from_millis(MIN_CLICK_AGE_MS as u64);
    config
}

/// A future polled at most `polls` times, then dropped: a worker killed
/// between two of its store operations.
struct Killed<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for Killed<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            return Poll::Ready(None);
        }
        self.polls -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// The deliveries not yet acknowledged, shared by the workers.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Delivery>,
    in_flight: usize,
}

/// One worker: takes random-sized batches and sometimes dies mid-batch;
/// what it did not acknowledge goes back to the queue.
async fn work(worker: Arc<Worker>, queue: Arc<Mutex<Queue>>, seed: u64) {
    let mut dice = Dice(seed);
    for _ in 0..10_000 {
        let batch: Vec<Delivery> = {
            let mut q = queue.lock().unwrap();
            if q.waiting.is_empty() && q.in_flight == 0 {
                return;
            }
            let size = 1 + dice.below(12);
            let n = size.min(q.waiting.len());
            q.in_flight += n;
            q.waiting.drain(..n).collect()
        };
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let kill = dice.below(4) == 0;
        let polls = if kill { 1 + dice.below(30) } else { usize::MAX };
        let w = Arc::clone(&worker);
        let copy = batch.clone();
        let done = Killed {
            inner: Box::pin(async move { w.apply_batch(copy).await }),
            polls,
        }
        .await
        .unwrap_or_default();
        let mut q = queue.lock().unwrap();
        q.in_flight -= batch.len();
        for delivery in batch {
            if !done.contains(&delivery.delivery) {
                q.waiting.push_back(delivery);
            }
        }
    }
    panic!("the queue never drained");
}

async fn run_case(store: Arc<dyn Store>, (steps, partner_of, seed): Case) {
    let case = format!("k{}", CASES.fetch_add(1, Ordering::Relaxed));
    let partners: Vec<String> = (0..PARTNERS).map(|p| format!("{case}p{p}")).collect();
    // An endpoint, so that the webhook events are kept (with none, the
    // stores drop them).
    let endpoint = lastclick::webhooks::WebhookEndpoint {
        id: format!("wh_{case}"),
        url: "https://hooks.example.com/lc".into(),
        events: lastclick::webhooks::WebhookEventType::ALL.to_vec(),
        secret: "whsec_model".into(),
        created_at: Utc::now(),
    };
    store.insert_webhook(&endpoint).await.unwrap();
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
            at: CLICK_MS / 1000,
        };
        store
            .record_clicks(std::slice::from_ref(&click))
            .await
            .unwrap();
        clicks.push(click.click_id);
    }
    let events = events(&case, &steps, &partner_of, &clicks);
    let customers: HashMap<String, Option<usize>> = (0..CUSTOMERS)
        .map(|c| (format!("{case}c{c}"), partner_of[c]))
        .collect();
    let expected = model(&events, &customers);

    let mut dice = Dice(seed);
    let order = delivery_order(&events, &mut dice);
    let workers = 1 + dice.below(3);
    let queue = Arc::new(Mutex::new(Queue {
        waiting: order
            .iter()
            .enumerate()
            .map(|(i, event)| Delivery {
                delivery: format!("d{i}"),
                event: event.clone(),
                queued_at_ms: 0,
            })
            .collect(),
        in_flight: 0,
    }));
    let metrics = Arc::new(Metrics::new());
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let worker = Arc::new(Worker::new(
                Arc::clone(&store),
                &config(),
                Arc::clone(&metrics),
            ));
            tokio::spawn(work(
                worker,
                Arc::clone(&queue),
                seed.wrapping_add(w as u64 + 1),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // What killed workers left in inboxes (their locks lapse) is drained
    // by a worker that lives.
    let last = Worker::new(Arc::clone(&store), &config(), metrics);
    for round in 0.. {
        last.drain_ready().await;
        let mine: Vec<PartnerId> = store
            .ready_partners(1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.as_str().starts_with(&case))
            .collect();
        if mine.is_empty() {
            break;
        }
        assert!(round < 1000, "inboxes never drained: {mine:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let now = DateTime::from_timestamp_millis(BASE_MS + 200 * DAY_MS).unwrap();
    let rules = config().rules();
    let feed = webhook_feed(&store).await;
    let context = format!(
        "{workers} workers; delivered: {:?}",
        order
            .iter()
            .map(|e| (&e.id, &e.customer, e.kind.name(), e.at.timestamp_millis()))
            .collect::<Vec<_>>()
    );
    for (p, id) in partners.iter().enumerate() {
        let model = &expected[p];
        let request = BookRequest {
            customers: customers.keys().cloned().collect(),
            ..BookRequest::default()
        };
        let view = store.load_book(&pid(id), &request).await.unwrap();
        assert_eq!(
            view.book.arr.normalize(),
            model.arr().normalize(),
            "ARR of {id}; {context}"
        );
        let rates: BTreeMap<String, Decimal> = view
            .customers
            .iter()
            .filter_map(|(c, record)| Some((c.clone(), record.signup.as_ref()?.rate)))
            .collect();
        let model_rates: BTreeMap<String, Decimal> = model
            .customers
            .iter()
            .map(|(c, record)| (c.clone(), record.rate))
            .collect();
        assert_eq!(rates, model_rates, "locked rates of {id}; {context}");
        assert_eq!(
            view.book.tier(&rules, now).name,
            model.tier(now.timestamp_millis()).0,
            "tier of {id}; {context}"
        );
        let shown = |pick: fn(&lastclick::conversions::book::Balance) -> Decimal| {
            view.book
                .balances(now)
                .iter()
                .map(|b| (b.currency.to_string(), pick(b).normalize()))
                .filter(|(_, v)| !v.is_zero())
                .collect::<BTreeMap<String, Decimal>>()
        };
        let normalized = |sums: BTreeMap<String, Decimal>| {
            sums.into_iter()
                .map(|(c, v)| (c, v.normalize()))
                .collect::<BTreeMap<String, Decimal>>()
        };
        let available = normalized(model.available());
        assert_eq!(
            shown(|b| b.available),
            available,
            "balances of {id}; {context}"
        );
        assert_eq!(
            shown(|b| b.on_hold),
            normalized(model.on_hold()),
            "on hold of {id}; {context}"
        );

        let ledger = store.ledger(&pid(id), None, 10_000).await.unwrap();
        let seqs: Vec<u64> = ledger.iter().rev().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=ledger.len() as u64).collect::<Vec<_>>(),
            "append-only ledger"
        );
        let mut net: BTreeMap<String, Decimal> = BTreeMap::new();
        for entry in &ledger {
            *net.entry(entry.id.clone()).or_default() += entry.amount;
        }
        net.retain(|_, v| !v.is_zero());
        let model_net: BTreeMap<String, Decimal> = model
            .net
            .iter()
            .filter(|(_, (v, _))| !v.is_zero())
            .map(|(id, (v, _))| (id.clone(), *v))
            .collect();
        assert_eq!(net, model_net, "ledger of {id} (net per event); {context}");

        let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let cells = store
            .conversion_counts(&pid(id), day, day + chrono::Days::new(3650))
            .await
            .unwrap();
        let mut counts = lastclick::conversions::customer::ConversionCounts::default();
        for (_, cell) in &cells {
            counts.add(cell);
        }
        assert_eq!(
            counts.signups as usize,
            model.customers.len(),
            "report signups of {id}"
        );
        assert_eq!(
            counts.customers as usize,
            model.customers.values().filter(|c| c.paid).count(),
            "report paying customers of {id}; {context}"
        );
        let revenue: BTreeMap<String, Decimal> = counts
            .revenue
            .iter()
            .map(|(c, v)| (c.to_string(), v.normalize()))
            .filter(|(_, v)| !v.is_zero())
            .collect();
        let model_revenue: BTreeMap<String, Decimal> = model
            .revenue()
            .into_iter()
            .map(|(c, v)| (c, v.normalize()))
            .filter(|(_, v)| !v.is_zero())
            .collect();
        assert_eq!(revenue, model_revenue, "report revenue of {id}; {context}");
        let commission: BTreeMap<String, Decimal> = counts
            .commission
            .iter()
            .map(|(c, v)| (c.to_string(), v.normalize()))
            .filter(|(_, v)| !v.is_zero())
            .collect();
        assert_eq!(
            commission,
            normalized(model.earned()),
            "report commission of {id}; {context}"
        );
        let events = feed.get(id.as_str()).map_or(&[][..], Vec::as_slice);
        check_webhook_events(events, &ledger, model, &context);
    }
}

/// Every webhook event of the store's feed (the outboxes gathered first),
/// by partner.
async fn webhook_feed(store: &Arc<dyn Store>) -> BTreeMap<String, Vec<serde_json::Value>> {
    while store.gather_outboxes().await.unwrap() > 0 {}
    let mut by_partner: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = store.feed(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in page {
            let body: serde_json::Value = serde_json::from_str(&event.event.body).unwrap();
            let partner = body["partner"].as_str().unwrap().to_owned();
            by_partner.entry(partner).or_default().push(body);
        }
    }
    by_partner
}

/// The webhook events a partner's changes wrote, killed workers and
/// retried steps included: one `customer.attributed` per customer, and one
/// commission event per ledger line that moves a customer's money, with
/// its amount; no id twice.
fn check_webhook_events(
    events: &[serde_json::Value],
    ledger: &[lastclick::conversions::book::LedgerEntry],
    model: &ModelPartner,
    context: &str,
) {
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "an id twice; {context}");
    let attributed: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "customer.attributed")
        .map(|e| e["data"]["customer"].as_str().unwrap())
        .collect();
    let customers: BTreeSet<&str> = model.customers.keys().map(String::as_str).collect();
    assert_eq!(attributed.len(), customers.len(), "attributions; {context}");
    assert_eq!(attributed.into_iter().collect::<BTreeSet<_>>(), customers);
    let commissions: BTreeMap<u64, Decimal> = events
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("commission."))
        .map(|e| {
            let amount = e["data"]["amount"].as_str().unwrap().parse().unwrap();
            (e["data"]["seq"].as_u64().unwrap(), amount)
        })
        .collect();
    // No payouts or hold decisions here: every line is a customer's money.
    let lines: BTreeMap<u64, Decimal> = ledger.iter().map(|e| (e.seq, e.amount)).collect();
    assert_eq!(
        commissions, lines,
        "commission events by ledger line; {context}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_sqlite_store_matches_the_model(case in case()) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("lastclick.db"), Duration::from_secs(200 * 86_400));
        let store: Arc<dyn Store> = Arc::new(store.unwrap());
        runtime().block_on(run_case(store, case));
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
        .run(&case(), |case| {
            rt.block_on(run_case(Arc::clone(&store), case));
            Ok(())
        })
        .unwrap();
}

/// A worker leaves a ready book another worker holds, drains the others,
/// and says so (its loop then looks again soon, to take a share); once
/// the book is given back it drains that one too.
async fn a_worker_leaves_held_books_and_drains_the_rest(store: Arc<dyn Store>) {
    let item = |partner: &str, id: &str| InboxItem {
        event: Event {
            id: EventId::parse(id).unwrap(),
            customer: CustomerId::parse(&format!("{partner}-cus")).unwrap(),
            at: DateTime::from_timestamp_millis(BASE_MS).unwrap(),
            kind: EventKind::Cancel,
        },
        referral: Referral {
            partner: pid(partner),
            campaign: "default_link".into(),
            term: None,
            click_at: BASE_MS / 1000,
            found: None,
        },
    };
    for partner in ["held-a", "held-b", "held-c"] {
        store
            .push_inbox(&pid(partner), &[item(partner, &format!("{partner}-x"))])
            .await
            .unwrap();
    }
    let hour = Duration::from_secs(3600);
    assert!(store
        .lock_book(&pid("held-b"), "another", hour)
        .await
        .unwrap());
    let worker = Worker::new(Arc::clone(&store), &config(), Arc::new(Metrics::new()));
    assert_eq!(worker.drain_ready().await, Drained::OthersBusy);
    assert_eq!(store.ready_partners(10).await.unwrap(), vec![pid("held-b")]);
    for (partner, waiting) in [("held-a", 0), ("held-b", 1), ("held-c", 0)] {
        let inbox = store.read_inbox(&pid(partner), 10).await.unwrap();
        assert_eq!(inbox.items.len(), waiting, "{partner}");
    }
    store.unlock_book(&pid("held-b"), "another").await.unwrap();
    assert_eq!(worker.drain_ready().await, Drained::Idle);
    assert!(store.ready_partners(10).await.unwrap().is_empty());
    assert!(store
        .read_inbox(&pid("held-b"), 10)
        .await
        .unwrap()
        .is_empty());
}

#[test]
fn held_books_are_left_to_their_holder_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("lastclick.db"),
        Duration::from_secs(86_400),
    );
    runtime().block_on(a_worker_leaves_held_books_and_drains_the_rest(Arc::new(
        store.unwrap(),
    )));
}

#[test]
fn held_books_are_left_to_their_holder_redis() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt
        .block_on(RedisStore::connect(
            &server.url(),
            false,
            Duration::from_secs(86_400),
        ))
        .unwrap();
    rt.block_on(a_worker_leaves_held_books_and_drains_the_rest(Arc::new(
        store,
    )));
}
