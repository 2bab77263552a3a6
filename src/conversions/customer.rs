//! A referred customer as one record: its signup and every payment, refund
//! and cancel it had, and what they are owed, derived from those events in
//! event-time order. Deriving from the whole set, not applying one event at
//! a time, is what makes a customer's money independent of delivery order.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::conversions::hold::{Hold, HoldStatus};
use crate::conversions::money::{arr_share, Billing, Currency, Money, Period};
use crate::ids::PartnerId;

/// Milliseconds in a day, for `commission.hold_days`.
pub const DAY_MS: i64 = 86_400_000;

/// An event's place in time: its `at` in unix milliseconds, then its id.
/// Every rule that says "in the order of `at`" means the order of keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventKey {
    pub at: i64,
    pub id: String,
}

/// Where a referred customer came from: fixed when the customer is first
/// claimed, so a redelivered signup resolves the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub partner: PartnerId,
    pub campaign: String,
    pub term: Option<String>,
    /// Unix seconds of the click.
    pub click_at: i64,
    /// How the signup found the click; absent on claims made before it
    /// was kept.
    #[serde(default)]
    pub found: Option<FoundClick>,
}

impl Referral {
    /// Whether a coupon code, not a click, made it: it has no click time
    /// (`click_at` is the signup's), so no delay and no hold.
    pub fn is_coupon(&self) -> bool {
        self.found.as_ref().is_some_and(|f| f.by == FoundBy::Coupon)
    }
}

/// How a signup named its click, for the attribution explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    Cookie,
    ClickId,
    VisitorId,
    /// A coupon code: no click (the ids are empty).
    Coupon,
}

/// The click a signup was credited to, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundClick {
    pub by: FoundBy,
    pub click_id: String,
    pub visitor_id: String,
}

/// The customer's signup as the book applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signup {
    pub key: EventKey,
    pub billing: Billing,
    /// The partner's rate at the signup, kept for life (recomputed only
    /// when an earlier event of the partner arrives late and changes the
    /// tier the partner had at that moment).
    pub rate: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub key: EventKey,
    pub amount: Decimal,
    pub currency: Currency,
    pub period: Period,
}

impl PaymentEvent {
    pub fn money(&self) -> Money {
        Money::new(self.amount, self.currency)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundEvent {
    pub key: EventKey,
    /// The id of the payment refunded.
    pub payment: String,
    pub amount: Decimal,
    pub currency: Currency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A payment's commission.
    Commission,
    /// A refund's share of a payment's commission, taken back.
    Clawback,
    /// A correction to what an earlier commission or clawback posted, when
    /// a late event changed what it should have been.
    Adjustment,
    /// A payout of an earlier version, requested and paid at once.
    Payout,
    /// A payout requested: its amount leaves the balance.
    #[serde(rename = "payout_requested")]
    PayoutRequested,
    /// A requested payout sent: the balance does not change.
    #[serde(rename = "payout_paid")]
    PayoutPaid,
    /// A requested payout that did not go through: its amount returns.
    #[serde(rename = "payout_failed")]
    PayoutFailed,
    /// A held customer's commissions released: the balance does not
    /// change, they move from pending to the usual schedule.
    #[serde(rename = "hold_released")]
    HoldReleased,
    /// A held customer's commissions rejected: taken back.
    #[serde(rename = "hold_rejected")]
    HoldRejected,
}

/// What the ledger owes (or has posted) for one source event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub kind: EntryKind,
    pub amount: Decimal,
    pub currency: Currency,
    /// The source event's `at`, unix ms.
    pub at: i64,
    /// When it becomes available for payout, unix ms.
    pub available_at: i64,
}

/// The conversion columns of one report cell: a partner's customers
/// referred by clicks of one UTC day, campaign and term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCounts {
    pub signups: u64,
    /// Customers who paid at least once.
    pub customers: u64,
    /// Payments less refunds, per currency.
    pub revenue: BTreeMap<Currency, Decimal>,
    /// Commissions less clawbacks, per currency.
    pub commission: BTreeMap<Currency, Decimal>,
}

impl ConversionCounts {
    /// Adds another cell's counts (a report row sums its cells).
    pub fn add(&mut self, other: &ConversionCounts) {
        self.signups += other.signups;
        self.customers += other.customers;
        for (currency, amount) in &other.revenue {
            *self.revenue.entry(*currency).or_default() += amount;
        }
        for (currency, amount) in &other.commission {
            *self.commission.entry(*currency).or_default() += amount;
        }
    }

    /// Replaces a customer's contribution `before` by `after`. A customer's
    /// signups and paying status only ever grow, so the counts never go
    /// below zero.
    pub fn replace(&mut self, before: &ConversionCounts, after: &ConversionCounts) {
        self.signups = (self.signups + after.signups).saturating_sub(before.signups);
        self.customers = (self.customers + after.customers).saturating_sub(before.customers);
        for (currency, amount) in &after.revenue {
            *self.revenue.entry(*currency).or_default() += amount;
        }
        for (currency, amount) in &before.revenue {
            *self.revenue.entry(*currency).or_default() -= amount;
        }
        for (currency, amount) in &after.commission {
            *self.commission.entry(*currency).or_default() += amount;
        }
        for (currency, amount) in &before.commission {
            *self.commission.entry(*currency).or_default() -= amount;
        }
    }
}

/// A customer claimed by a partner, with every event of it the partner's
/// book has taken. Events that come before the signup wait here (parked)
/// until it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub referral: Referral,
    pub signup: Option<Signup>,
    pub payments: Vec<PaymentEvent>,
    pub refunds: Vec<RefundEvent>,
    pub cancels: Vec<EventKey>,
    /// What the ledger has posted so far, net, per source event id.
    pub posted: BTreeMap<String, Decimal>,
    /// The customer's contribution to its report cell as last written.
    pub counts: ConversionCounts,
    /// The customer's ARR changes as last written: (at, change), by key.
    pub arr_points: Vec<(EventKey, Decimal)>,
    /// What the customer adds to the partner's ARR now.
    pub arr_share: Decimal,
    /// Set when the signup came sooner after its click than
    /// `attribution.min_click_age`. Last: the stored form before it had
    /// no such field (`book/stored.rs`).
    pub hold: Option<Hold>,
}

/// What a customer's events come to, derived in event-time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// What the ledger should hold, net, per source event id.
    pub owed: BTreeMap<String, Posting>,
    pub arr_points: Vec<(EventKey, Decimal)>,
    pub arr_share: Decimal,
    pub counts: ConversionCounts,
    /// Events taken but without effect until a predecessor arrives: the
    /// signup (for every event while it is missing) or the refunded
    /// payment. Answered as (event id, reason).
    pub parked: Vec<(String, &'static str)>,
}

/// The rule-set a derivation needs.
#[derive(Debug, Clone, Copy)]
pub struct Terms {
    pub hold_days: u32,
    /// ARR and tiers are measured in this currency only.
    pub arr_currency: Currency,
}

/// A payment as the derivation tracks it.
struct Paid<'a> {
    event: &'a PaymentEvent,
    commission: Decimal,
    refunded: Decimal,
    clawed_back: Decimal,
    available_at: i64,
}

enum Step<'a> {
    Payment(&'a PaymentEvent),
    Refund(&'a RefundEvent),
    Cancel(&'a EventKey),
}

impl Step<'_> {
    fn key(&self) -> &EventKey {
        match self {
            Step::Payment(p) => &p.key,
            Step::Refund(r) => &r.key,
            Step::Cancel(k) => k,
        }
    }
}

impl Customer {
    pub fn new(id: &str, referral: Referral) -> Self {
        Customer {
            id: id.to_owned(),
            referral,
            signup: None,
            payments: Vec::new(),
            refunds: Vec::new(),
            cancels: Vec::new(),
            posted: BTreeMap::new(),
            counts: ConversionCounts::default(),
            arr_points: Vec::new(),
            arr_share: Decimal::ZERO,
            hold: None,
        }
    }

    /// Whether its commissions wait for a decision.
    pub fn is_held(&self) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.status == HoldStatus::Held)
    }

    /// Whether its hold was rejected: it earns the partner nothing more.
    pub fn is_rejected(&self) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.status == HoldStatus::Rejected)
    }

    /// Every event id this record holds.
    pub fn holds(&self, id: &str) -> bool {
        self.signup.as_ref().is_some_and(|s| s.key.id == id)
            || self.payments.iter().any(|p| p.key.id == id)
            || self.refunds.iter().any(|r| r.key.id == id)
            || self.cancels.iter().any(|k| k.id == id)
    }

    /// Derives what the customer's events come to, in the order of their
    /// keys. Nothing counts before the signup is known.
    pub fn derive(&self, terms: Terms) -> Derived {
        let Some(signup) = &self.signup else {
            let parked = self
                .payments
                .iter()
                .map(|p| &p.key)
                .chain(self.refunds.iter().map(|r| &r.key))
                .chain(self.cancels.iter())
                .map(|k| (k.id.clone(), "no_signup"))
                .collect();
            return Derived {
                parked,
                ..Derived::default()
            };
        };
        let mut steps: Vec<Step<'_>> = self
            .payments
            .iter()
            .map(Step::Payment)
            .chain(self.refunds.iter().map(Step::Refund))
            .chain(self.cancels.iter().map(Step::Cancel))
            .collect();
        steps.sort_by(|a, b| a.key().cmp(b.key()));

        let mut run = Run {
            signup,
            terms,
            paid: HashMap::new(),
            waiting: HashMap::new(),
            latest_payment: None,
            latest_cancel: None,
            derived: Derived {
                counts: ConversionCounts {
                    signups: 1,
                    ..ConversionCounts::default()
                },
                ..Derived::default()
            },
            points: BTreeMap::new(),
        };
        for step in steps {
            match step {
                Step::Payment(p) => run.payment(p),
                Step::Refund(r) => run.refund(r),
                Step::Cancel(k) => {
                    run.latest_cancel = Some(k);
                    run.move_share(k);
                }
            }
        }
        run.finish()
    }
}

/// The state of one derivation.
struct Run<'a> {
    signup: &'a Signup,
    terms: Terms,
    paid: HashMap<&'a str, Paid<'a>>,
    /// Refunds whose payment has not come (yet), by payment id.
    waiting: HashMap<&'a str, Vec<&'a RefundEvent>>,
    latest_payment: Option<&'a PaymentEvent>,
    latest_cancel: Option<&'a EventKey>,
    derived: Derived,
    points: BTreeMap<EventKey, Decimal>,
}

impl<'a> Run<'a> {
    fn payment(&mut self, p: &'a PaymentEvent) {
        let earned = match self.signup.billing {
            Billing::Referral => p.money().share(self.signup.rate).amount,
            Billing::Reseller => Decimal::ZERO,
        };
        let available_at = p.key.at + i64::from(self.terms.hold_days) * DAY_MS;
        self.derived.owed.insert(
            p.key.id.clone(),
            Posting {
                kind: EntryKind::Commission,
                amount: earned,
                currency: p.currency,
                at: p.key.at,
                available_at,
            },
        );
        self.paid.insert(
            &p.key.id,
            Paid {
                event: p,
                commission: earned,
                refunded: Decimal::ZERO,
                clawed_back: Decimal::ZERO,
                available_at,
            },
        );
        self.latest_payment = Some(p);
        // A refund that came before its payment (in time) applies now.
        for refund in self.waiting.remove(p.key.id.as_str()).unwrap_or_default() {
            self.refund(refund);
        }
        self.move_share(&p.key);
    }

    /// Claws back the refunded share of the payment's commission, rounded
    /// on the running total so partial refunds add up to the commission.
    /// Refunds beyond the payment's amount are capped at it; a refund in
    /// another currency than its payment has no effect.
    fn refund(&mut self, r: &'a RefundEvent) {
        let Some(paid) = self.paid.get_mut(r.payment.as_str()) else {
            self.waiting.entry(&r.payment).or_default().push(r);
            return;
        };
        if paid.event.currency != r.currency {
            return;
        }
        let amount = paid.event.amount;
        paid.refunded = (paid.refunded + r.amount).min(amount);
        let owed = if paid.refunded == amount {
            paid.commission
        } else {
            r.currency.round(paid.commission * paid.refunded / amount)
        };
        let claw = owed - paid.clawed_back;
        paid.clawed_back = owed;
        self.derived.owed.insert(
            r.key.id.clone(),
            Posting {
                kind: EntryKind::Clawback,
                amount: -claw,
                currency: r.currency,
                at: r.key.at,
                // A clawback follows its payment's date: before it, it
                // cancels the pending commission; after, it takes from
                // what is available.
                available_at: paid.available_at,
            },
        );
    }

    /// Records the change of the customer's ARR share at `key` (no earlier
    /// than the signup: the partner's ARR before the signup never counts
    /// the customer).
    fn move_share(&mut self, key: &EventKey) {
        let share = self.share();
        let change = share - self.derived.arr_share;
        if change.is_zero() {
            return;
        }
        self.derived.arr_share = share;
        let at = if key < &self.signup.key {
            self.signup.key.clone()
        } else {
            key.clone()
        };
        *self.points.entry(at).or_default() += change;
    }

    /// The share of the latest payment, unless a later cancel took it out.
    /// Only payments in the ARR currency count.
    fn share(&self) -> Decimal {
        let Some(latest) = self.latest_payment else {
            return Decimal::ZERO;
        };
        let cancelled = self.latest_cancel.is_some_and(|c| c > &latest.key);
        if cancelled || latest.currency != self.terms.arr_currency {
            return Decimal::ZERO;
        }
        arr_share(
            latest.amount,
            latest.period,
            self.signup.billing,
            self.signup.rate,
        )
    }

    fn finish(mut self) -> Derived {
        let counts = &mut self.derived.counts;
        counts.customers = u64::from(!self.paid.is_empty());
        for paid in self.paid.values() {
            let currency = &paid.event.currency;
            *counts.revenue.entry(*currency).or_default() += paid.event.amount - paid.refunded;
        }
        for posting in self.derived.owed.values() {
            *counts.commission.entry(posting.currency).or_default() += posting.amount;
        }
        let mut parked: Vec<&RefundEvent> = self.waiting.into_values().flatten().collect();
        parked.sort_by(|a, b| a.key.cmp(&b.key));
        self.derived.parked = parked
            .into_iter()
            .map(|r| (r.key.id.clone(), "payment_not_found"))
            .collect();
        self.derived.arr_points = self
            .points
            .into_iter()
            .filter(|(_, change)| !change.is_zero())
            .collect();
        self.derived
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn key(at: i64, id: &str) -> EventKey {
        EventKey { at, id: id.into() }
    }

    fn customer(rate: &str, billing: Billing) -> Customer {
        let mut c = Customer::new(
            "c1",
            Referral {
                partner: PartnerId::parse("acme").unwrap(),
                campaign: "default_link".into(),
                term: None,
                click_at: 0,
                found: None,
            },
        );
        c.signup = Some(Signup {
            key: key(1_000, "s"),
            billing,
            rate: d(rate),
        });
        c
    }

    fn pay(c: &mut Customer, at: i64, id: &str, amount: &str) {
        c.payments.push(PaymentEvent {
            key: key(at, id),
            amount: d(amount),
            currency: Currency::USD,
            period: Period::Month,
        });
    }

    fn refund(c: &mut Customer, at: i64, id: &str, payment: &str, amount: &str) {
        c.refunds.push(RefundEvent {
            key: key(at, id),
            payment: payment.into(),
            amount: d(amount),
            currency: Currency::USD,
        });
    }

    const TERMS: Terms = Terms {
        hold_days: 0,
        arr_currency: Currency::USD,
    };

    #[test]
    fn the_same_events_in_any_order_derive_the_same_money() {
        let mut a = customer("0.20", Billing::Referral);
        pay(&mut a, 2_000, "p1", "10.01");
        refund(&mut a, 3_000, "r1", "p1", "3.33");
        refund(&mut a, 4_000, "r2", "p1", "3.33");
        refund(&mut a, 5_000, "r3", "p1", "9");
        let mut b = a.clone();
        b.refunds.reverse();
        let (da, db) = (a.derive(TERMS), b.derive(TERMS));
        assert_eq!(da, db);
        let clawed: Decimal = ["r1", "r2", "r3"].iter().map(|r| da.owed[*r].amount).sum();
        assert_eq!(clawed, -da.owed["p1"].amount, "refunds claw back exactly");
    }

    #[test]
    fn a_refund_before_its_payment_waits_for_it() {
        let mut c = customer("0.20", Billing::Referral);
        refund(&mut c, 3_000, "r1", "p1", "300");
        let waiting = c.derive(TERMS);
        assert_eq!(waiting.parked, vec![("r1".into(), "payment_not_found")]);
        assert!(waiting.owed.is_empty());
        pay(&mut c, 2_000, "p1", "300");
        let derived = c.derive(TERMS);
        assert!(derived.parked.is_empty());
        assert_eq!(derived.owed["p1"].amount, d("60"));
        assert_eq!(derived.owed["r1"].amount, d("-60"));
        assert_eq!(derived.counts.revenue[&Currency::USD], d("0"));
    }

    #[test]
    fn the_latest_payment_by_milliseconds_sets_the_share() {
        let mut c = customer("0", Billing::Reseller);
        pay(&mut c, 5_900, "a", "1000");
        pay(&mut c, 5_100, "b", "10");
        assert_eq!(c.derive(TERMS).arr_share, d("12000"));
    }

    #[test]
    fn a_later_cancel_takes_the_share_out_and_a_later_payment_brings_it_back() {
        let mut c = customer("0.20", Billing::Referral);
        pay(&mut c, 2_000, "p1", "100");
        c.cancels.push(key(3_000, "x"));
        assert_eq!(c.derive(TERMS).arr_share, d("0"));
        pay(&mut c, 4_000, "p2", "100");
        let derived = c.derive(TERMS);
        assert_eq!(derived.arr_share, d("960"));
        assert_eq!(
            derived.arr_points,
            vec![
                (key(2_000, "p1"), d("960")),
                (key(3_000, "x"), d("-960")),
                (key(4_000, "p2"), d("960"))
            ]
        );
    }

    #[test]
    fn commissions_and_their_clawbacks_follow_the_payments_date() {
        let mut c = customer("0.20", Billing::Referral);
        pay(&mut c, 30 * DAY_MS, "p1", "300");
        refund(&mut c, 2_000, "r1", "p1", "300");
        let derived = c.derive(Terms {
            hold_days: 2,
            arr_currency: Currency::USD,
        });
        assert_eq!(derived.owed["p1"].available_at, 32 * DAY_MS);
        assert_eq!(derived.owed["r1"].available_at, 32 * DAY_MS);
    }

    #[test]
    fn events_before_the_signup_wait_for_it() {
        let mut c = customer("0.20", Billing::Referral);
        c.signup = None;
        pay(&mut c, 2_000, "p1", "100");
        assert_eq!(c.derive(TERMS).parked, vec![("p1".into(), "no_signup")]);
    }
}
