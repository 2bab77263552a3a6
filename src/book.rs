//! A partner's book: its referred customers, their payments, the ledger and
//! the balances, and the pure functions that apply one event or one payout
//! to it. Stores keep books; this module decides what changes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::Tier;
use crate::money::{self, arr_share, commission, minor_digits, Billing, Period};

const DAY_SECS: i64 = 86_400;

/// Where a referred customer came from: fixed when the customer is first
/// claimed, so a redelivered signup resolves the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub partner: String,
    pub campaign: String,
    pub term: Option<String>,
    /// Unix seconds of the click.
    pub click_at: i64,
}

/// A referred customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub referral: Referral,
    pub billing: Billing,
    /// The partner's rate when the customer signed up, kept for life.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    pub signed_up_at: i64,
    pub cancelled_at: Option<i64>,
    /// The latest payment by time: it sets the customer's ARR share.
    pub latest_payment: Option<LatestPayment>,
    /// What the customer adds to the partner's ARR now.
    #[serde(with = "rust_decimal::serde::str")]
    pub arr_share: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestPayment {
    pub at: i64,
    pub id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub period: Period,
}

/// A payment of a referred customer, kept for refunds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub customer: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub commission: Decimal,
    /// Refunded so far, at most `amount`.
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    /// Commission clawed back so far.
    #[serde(with = "rust_decimal::serde::str")]
    pub clawed_back: Decimal,
    /// When its commission became or becomes available.
    pub available_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Commission,
    Clawback,
    Payout,
}

/// One line of the ledger. Amounts are signed: commissions add, clawbacks
/// and payouts take away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the partner's ledger, from 1; pages count down from it.
    pub seq: u64,
    /// The event (commission, clawback) or payout that made it.
    pub id: String,
    pub kind: EntryKind,
    pub customer: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub at: DateTime<Utc>,
    pub available_at: DateTime<Utc>,
}

/// The running totals of one currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    /// Commissions less clawbacks already available, less payouts.
    #[serde(with = "rust_decimal::serde::str")]
    pub available: Decimal,
    /// Paid out so far.
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    /// Amounts not yet available: (available at, amount).
    pub held: Vec<(i64, String)>,
}

/// A partner's money summary: what every event reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    #[serde(with = "rust_decimal::serde::str")]
    pub arr: Decimal,
    /// Signup times of the partner's referred customers.
    pub signups: Vec<i64>,
    pub totals: BTreeMap<String, CurrencyTotals>,
    /// Entries written so far; the next gets `entries + 1`.
    pub entries: u64,
}

/// A balance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Balance {
    pub currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub pending: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub available: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
}

/// What one event or payout changes in a book, applied atomically with the
/// record that it was applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub book: Option<Book>,
    pub customer: Option<Customer>,
    pub payment: Option<Payment>,
    pub entries: Vec<LedgerEntry>,
    /// The customer's report cell (see [`conversion_cell`]) as it becomes.
    pub conversions: Option<(String, ConversionCounts)>,
}

/// The conversion columns of one report cell: a partner's customers
/// referred by clicks of one UTC day, campaign and term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionCounts {
    pub signups: u64,
    /// Customers who paid at least once.
    pub customers: u64,
    /// Payments less refunds, per currency.
    pub revenue: BTreeMap<String, Decimal>,
    /// Commissions less clawbacks, per currency.
    pub commission: BTreeMap<String, Decimal>,
}

impl ConversionCounts {
    /// Adds what `changes` did, given the customer and payment as they were
    /// before it.
    pub fn record(
        &mut self,
        changes: &Changes,
        customer_before: Option<&Customer>,
        payment_before: Option<&Payment>,
    ) {
        if changes.customer.is_some() && customer_before.is_none() {
            self.signups += 1;
        }
        let Some(after) = &changes.payment else {
            return;
        };
        let currency = after.currency.clone();
        let (revenue, commission) = match payment_before {
            None => {
                let first = customer_before.is_some_and(|c| c.latest_payment.is_none());
                self.customers += u64::from(first);
                (after.amount, after.commission)
            }
            Some(before) => (
                before.refunded - after.refunded,
                before.clawed_back - after.clawed_back,
            ),
        };
        *self.revenue.entry(currency.clone()).or_default() += revenue;
        *self.commission.entry(currency).or_default() += commission;
    }

    /// Adds another cell's counts (a report row sums its cells).
    pub fn add(&mut self, other: &ConversionCounts) {
        self.signups += other.signups;
        self.customers += other.customers;
        for (currency, amount) in &other.revenue {
            *self.revenue.entry(currency.clone()).or_default() += amount;
        }
        for (currency, amount) in &other.commission {
            *self.commission.entry(currency.clone()).or_default() += amount;
        }
    }
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

/// The rules of the program, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub tiers: Vec<Tier>,
    pub hold_days: u32,
    /// Smallest payout per currency; a currency not listed is never paid.
    pub payout_minimum: BTreeMap<String, Decimal>,
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap_or_default()
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

impl CurrencyTotals {
    /// Moves what has matured by `now` from held to available.
    fn settle(&mut self, now: i64) {
        let (matured, held): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(at, _)| *at <= now);
        self.held = held;
        self.available += matured
            .iter()
            .map(|(_, amount)| dec(amount))
            .sum::<Decimal>();
    }

    fn credit(&mut self, amount: Decimal, available_at: i64, now: i64) {
        if available_at <= now {
            self.available += amount;
        } else {
            self.held.push((available_at, amount.to_string()));
        }
    }

    fn pending_at(&self, now: i64) -> (Decimal, Decimal) {
        let mut pending = Decimal::ZERO;
        let mut matured = Decimal::ZERO;
        for (at, amount) in &self.held {
            if *at <= now {
                matured += dec(amount);
            } else {
                pending += dec(amount);
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
                let (pending, matured) = totals.pending_at(now.timestamp());
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

    /// Whether the partner had a new customer in the 12 months up to `at`.
    fn recent_customer(&self, at: DateTime<Utc>) -> bool {
        money::signups_within(&self.signups, at, 12) > 0
    }

    pub fn tier<'r>(&self, rules: &'r Rules, at: DateTime<Utc>) -> &'r Tier {
        money::tier_for(&rules.tiers, self.arr, self.recent_customer(at))
    }

    #[allow(clippy::too_many_arguments)] // one per column of the entry
    fn entry(
        &mut self,
        id: &str,
        kind: EntryKind,
        customer: Option<&str>,
        amount: Decimal,
        currency: &str,
        at: i64,
        available_at: i64,
    ) -> LedgerEntry {
        self.entries += 1;
        LedgerEntry {
            seq: self.entries,
            id: id.to_owned(),
            kind,
            customer: customer.map(str::to_owned),
            amount,
            currency: currency.to_owned(),
            at: time(at),
            available_at: time(available_at),
        }
    }
}

fn time(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// A new referred customer. The rate is the partner's tier when the
/// customer signs up, before counting the customer.
pub fn signup(
    book: &Book,
    rules: &Rules,
    customer: &str,
    referral: Referral,
    billing: Billing,
    at: DateTime<Utc>,
) -> Changes {
    let mut book = book.clone();
    let rate = book.tier(rules, at).rate;
    book.signups.push(at.timestamp());
    Changes {
        book: Some(book),
        customer: Some(Customer {
            id: customer.to_owned(),
            referral,
            billing,
            rate,
            signed_up_at: at.timestamp(),
            cancelled_at: None,
            latest_payment: None,
            arr_share: Decimal::ZERO,
        }),
        ..Changes::default()
    }
}

/// The customer's ARR share given its latest payment and cancellation.
/// Only payments in `arr_currency` count: ARR and tiers are measured in one
/// currency.
fn customer_arr(customer: &Customer, arr_currency: &str) -> Decimal {
    let Some(latest) = &customer.latest_payment else {
        return Decimal::ZERO;
    };
    let cancelled = customer.cancelled_at.is_some_and(|c| c >= latest.at);
    if cancelled || latest.currency != arr_currency {
        return Decimal::ZERO;
    }
    arr_share(
        latest.amount,
        latest.period,
        customer.billing,
        customer.rate,
    )
}

/// The currency ARR and tiers are measured in: the one payouts list first
/// (USD by default).
pub fn arr_currency(rules: &Rules) -> &str {
    rules
        .payout_minimum
        .keys()
        .find(|c| c.as_str() == "USD")
        .or_else(|| rules.payout_minimum.keys().next())
        .map_or("USD", String::as_str)
}

fn with_customer(book: &mut Book, mut customer: Customer, rules: &Rules) -> Customer {
    let share = customer_arr(&customer, arr_currency(rules));
    book.arr += share - customer.arr_share;
    customer.arr_share = share;
    customer
}

/// A payment: commission for a referral customer, and the customer's ARR
/// share from its latest payment.
#[allow(clippy::too_many_arguments)] // the payment event's fields
pub fn payment(
    book: &Book,
    rules: &Rules,
    customer: &Customer,
    id: &str,
    amount: Decimal,
    currency: &str,
    period: Period,
    at: DateTime<Utc>,
) -> Changes {
    let mut book = book.clone();
    let mut updated = customer.clone();
    let newer = updated
        .latest_payment
        .as_ref()
        .is_none_or(|l| (l.at, l.id.as_str()) < (at.timestamp(), id));
    if newer {
        updated.latest_payment = Some(LatestPayment {
            at: at.timestamp(),
            id: id.to_owned(),
            amount,
            currency: currency.to_owned(),
            period,
        });
    }
    let updated = with_customer(&mut book, updated, rules);
    let digits = minor_digits(currency).unwrap_or(2);
    let earned = match customer.billing {
        Billing::Referral => commission(amount, customer.rate, digits),
        Billing::Reseller => Decimal::ZERO,
    };
    let available_at = at.timestamp() + i64::from(rules.hold_days) * DAY_SECS;
    let mut entries = Vec::new();
    if !earned.is_zero() {
        book.totals.entry(currency.to_owned()).or_default().credit(
            earned,
            available_at,
            at.timestamp(),
        );
        entries.push(book.entry(
            id,
            EntryKind::Commission,
            Some(&customer.id),
            earned,
            currency,
            at.timestamp(),
            available_at,
        ));
    }
    Changes {
        book: Some(book),
        customer: Some(updated),
        payment: Some(Payment {
            id: id.to_owned(),
            customer: customer.id.clone(),
            amount,
            currency: currency.to_owned(),
            commission: earned,
            refunded: Decimal::ZERO,
            clawed_back: Decimal::ZERO,
            available_at,
        }),
        entries,
        conversions: None,
    }
}

/// A refund claws back the refunded share of the payment's commission, even
/// after payout; ARR is left as it is. Refunds beyond the payment's amount
/// are capped at it.
pub fn refund(
    book: &Book,
    payment: &Payment,
    id: &str,
    amount: Decimal,
    at: DateTime<Utc>,
) -> Changes {
    let mut book = book.clone();
    let mut updated = payment.clone();
    let refunded = (updated.refunded + amount).min(updated.amount);
    updated.refunded = refunded;
    let digits = minor_digits(&payment.currency).unwrap_or(2);
    // The clawback owed so far is the refunded share of the commission;
    // taking the difference keeps partial refunds from drifting by rounding.
    let owed = if refunded == updated.amount {
        updated.commission
    } else {
        money::round_minor(updated.commission * refunded / updated.amount, digits)
    };
    let claw = owed - updated.clawed_back;
    updated.clawed_back = owed;
    let mut entries = Vec::new();
    if !claw.is_zero() {
        let available_at = payment.available_at;
        book.totals
            .entry(payment.currency.clone())
            .or_default()
            .credit(-claw, available_at, at.timestamp());
        entries.push(book.entry(
            id,
            EntryKind::Clawback,
            Some(&payment.customer),
            -claw,
            &payment.currency,
            at.timestamp(),
            available_at,
        ));
    }
    Changes {
        book: Some(book),
        payment: Some(updated),
        entries,
        ..Changes::default()
    }
}

/// A cancellation takes the customer out of ARR (until a later payment).
pub fn cancel(book: &Book, rules: &Rules, customer: &Customer, at: DateTime<Utc>) -> Changes {
    let mut book = book.clone();
    let mut updated = customer.clone();
    let later = updated.cancelled_at.is_none_or(|c| c < at.timestamp());
    if later {
        updated.cancelled_at = Some(at.timestamp());
    }
    let updated = with_customer(&mut book, updated, rules);
    Changes {
        book: Some(book),
        customer: Some(updated),
        ..Changes::default()
    }
}

/// A partner's standing in the program, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramStatus {
    pub tier: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
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
    #[serde(with = "rust_decimal::serde::str")]
    pub min_arr: Decimal,
    /// ARR still missing, 0 when only a new customer is missing.
    #[serde(with = "rust_decimal::serde::str")]
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

/// A payout of the whole available balance of `currency`.
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
    totals.settle(now.timestamp());
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
    let at = now.timestamp();
    let entry = book.entry(id, EntryKind::Payout, None, -available, currency, at, at);
    Ok(Changes {
        book: Some(book),
        entries: vec![entry],
        ..Changes::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            payout_minimum: [("USD".to_owned(), d("50"))].into(),
        }
    }

    fn at(day: i64) -> DateTime<Utc> {
        time(1_790_000_000 + day * DAY_SECS)
    }

    fn referral() -> Referral {
        Referral {
            partner: "acme".into(),
            campaign: "spring".into(),
            term: None,
            click_at: at(0).timestamp(),
        }
    }

    fn apply(book: &mut Book, change: impl FnOnce(&Book) -> Changes) -> Changes {
        let changes = change(book);
        if let Some(b) = &changes.book {
            *book = b.clone();
        }
        changes
    }

    /// Signs up customer `id` on `day` and answers it.
    fn new_customer(
        book: &mut Book,
        rules: &Rules,
        id: &str,
        billing: Billing,
        day: i64,
    ) -> Customer {
        apply(book, |b| signup(b, rules, id, referral(), billing, at(day)))
            .customer
            .unwrap()
    }

    /// A monthly USD payment `id` of `amount` on `day`.
    fn pay(
        book: &mut Book,
        rules: &Rules,
        customer: &Customer,
        id: &str,
        amount: &str,
        day: i64,
    ) -> Changes {
        apply(book, |b| {
            payment(
                b,
                rules,
                customer,
                id,
                d(amount),
                "USD",
                Period::Month,
                at(day),
            )
        })
    }

    #[test]
    fn twelve_monthly_payments_of_1000_at_20_percent_earn_2400() {
        let rules = rules(0);
        let mut book = Book::default();
        let c = apply(&mut book, |b| {
            signup(b, &rules, "c1", referral(), Billing::Referral, at(0))
        });
        let mut customer = c.customer.unwrap();
        assert_eq!(customer.rate, d("0.20"));
        for month in 0..12 {
            let id = format!("p{month}");
            let changes = apply(&mut book, |b| {
                payment(
                    b,
                    &rules,
                    &customer,
                    &id,
                    d("1000"),
                    "USD",
                    Period::Month,
                    at(month * 30),
                )
            });
            customer = changes.customer.unwrap();
        }
        let balance = &book.balances(at(400))[0];
        assert_eq!(balance.available, d("2400"));
        assert_eq!(book.arr, d("9600"));
        assert_eq!(book.entries, 12);
    }

    #[test]
    fn the_rate_is_locked_at_signup_and_new_tiers_apply_to_new_customers() {
        let rules = rules(0);
        let mut book = Book::default();
        let first = new_customer(&mut book, &rules, "c1", Billing::Reseller, 0);
        let paid = pay(&mut book, &rules, &first, "p1", "1000", 1);
        assert_eq!(book.arr, d("12000"));
        assert_eq!(paid.entries.len(), 0, "resellers earn no commission");
        let second = signup(&book, &rules, "c2", referral(), Billing::Referral, at(2));
        assert_eq!(
            second.customer.unwrap().rate,
            d("0.22"),
            "silver from 5,000 ARR"
        );
        let first = paid.customer.unwrap();
        assert_eq!(first.rate, d("0.20"), "the first customer keeps bronze");
    }

    #[test]
    fn gold_needs_a_new_customer_in_the_last_twelve_months() {
        let rules = rules(0);
        let book = Book {
            arr: d("25000"),
            signups: vec![at(0).timestamp()],
            ..Book::default()
        };
        assert_eq!(book.tier(&rules, at(100)).name, "gold");
        assert_eq!(book.tier(&rules, at(400)).name, "silver");
    }

    #[test]
    fn cancel_leaves_arr_and_refunds_claw_back_even_after_payout() {
        let rules = rules(0);
        let mut book = Book::default();
        let customer = new_customer(&mut book, &rules, "c1", Billing::Referral, 0);
        let paid = pay(&mut book, &rules, &customer, "p1", "300", 1);
        let payment_record = paid.payment.unwrap();
        assert_eq!(payment_record.commission, d("60"));
        apply(&mut book, |b| {
            payout(b, &rules, true, "po1", "USD", at(2)).unwrap()
        });
        assert_eq!(book.balances(at(2))[0].paid, d("60"));
        let refunded = apply(&mut book, |b| {
            refund(b, &payment_record, "r1", d("100"), at(3))
        });
        assert_eq!(refunded.entries[0].amount, d("-20"));
        assert_eq!(book.balances(at(3))[0].available, d("-20"));
        assert_eq!(book.arr, d("2880"), "a refund leaves ARR");
        let customer = paid.customer.unwrap();
        apply(&mut book, |b| cancel(b, &rules, &customer, at(4)));
        assert_eq!(book.arr, d("0"));
    }

    #[test]
    fn partial_refunds_claw_back_exactly_the_commission_in_total() {
        let rules = rules(0);
        let mut book = Book::default();
        let customer = new_customer(&mut book, &rules, "c1", Billing::Referral, 0);
        let mut record = pay(&mut book, &rules, &customer, "p1", "10.01", 1)
            .payment
            .unwrap();
        for (i, part) in ["3.33", "3.33", "3.35", "5"].iter().enumerate() {
            record = apply(&mut book, |b| {
                refund(b, &record, &format!("r{i}"), d(part), at(2))
            })
            .payment
            .unwrap();
        }
        assert_eq!(record.clawed_back, record.commission);
        assert_eq!(book.balances(at(3))[0].available, d("0"));
    }

    #[test]
    fn commissions_wait_hold_days_and_payouts_need_the_minimum_and_an_email() {
        let rules = rules(30);
        let mut book = Book::default();
        let customer = new_customer(&mut book, &rules, "c1", Billing::Referral, 0);
        pay(&mut book, &rules, &customer, "p1", "200", 1);
        let balance = &book.balances(at(2))[0];
        assert_eq!((balance.pending, balance.available), (d("40"), d("0")));
        assert_eq!(
            payout(&book, &rules, true, "po", "USD", at(2)).unwrap_err(),
            PayoutRefusal::NothingAvailable("USD".into())
        );
        assert_eq!(
            payout(&book, &rules, true, "po", "USD", at(31)).unwrap_err(),
            PayoutRefusal::BelowMinimum {
                currency: "USD".into(),
                available: d("40"),
                minimum: d("50")
            }
        );
        pay(&mut book, &rules, &customer, "p2", "50", 2);
        // 40 + 10 available from day 32.
        assert_eq!(
            payout(&book, &rules, false, "po", "USD", at(40)).unwrap_err(),
            PayoutRefusal::NoPaypalEmail
        );
        assert!(matches!(
            payout(&book, &rules, true, "po", "EUR", at(40)),
            Err(PayoutRefusal::CurrencyNotPaid(_))
        ));
        let paid = apply(&mut book, |b| {
            payout(b, &rules, true, "po", "USD", at(40)).unwrap()
        });
        assert_eq!(paid.entries[0].amount, d("-50"));
        let balance = &book.balances(at(40))[0];
        assert_eq!(
            (balance.pending, balance.available, balance.paid),
            (d("0"), d("0"), d("50"))
        );
        assert_eq!(book.entries, 3);
    }
}
