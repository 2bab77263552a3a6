//! Monthly statements over random ledgers: commissions, clawbacks and
//! adjustments at random, payouts requested, paid and failed through the
//! book's own steps, spread over several months. Each month's figures are
//! checked against a model that knows only the entries: opening +
//! movements = closing, the closing is the sum of everything posted
//! before the month's end, one month's closing is the next one's opening,
//! and what is in payout is what was requested and not yet settled.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use lastclick::conversions::book::{
    request_payout, settle_payout, Book, LedgerEntry, Payout, Rules, Settlement,
};
use lastclick::conversions::customer::EntryKind;
use lastclick::conversions::money::{Currency, Tier};
use lastclick::conversions::statement::{CurrencyStatement, Month, StatementBuilder};
use lastclick::ids::{PartnerId, PayoutId};
use proptest::prelude::*;
use rust_decimal::Decimal;

#[derive(Debug, Clone)]
enum Step {
    /// A commission (positive), clawback (negative) or adjustment, in cents.
    Earn(EntryKind, i64),
    RequestPayout,
    /// Settles the oldest requested payout, paid or failed.
    Settle(bool),
    /// Time passes, in hours.
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..40_000i64).prop_map(|c| Step::Earn(EntryKind::Commission, c)),
        1 => (1..10_000i64).prop_map(|c| Step::Earn(EntryKind::Clawback, -c)),
        1 => (-5_000..5_000i64).prop_map(|c| Step::Earn(EntryKind::Adjustment, c)),
        2 => Just(Step::RequestPayout),
        2 => any::<bool>().prop_map(Step::Settle),
        3 => (1..24 * 20i64).prop_map(Step::Wait),
    ]
}

fn rules() -> Rules {
    Rules {
        tiers: vec![Tier {
            name: "bronze".into(),
            min_arr: Decimal::ZERO,
            rate: Decimal::new(20, 2),
            needs_recent_customer: false,
        }],
        hold_days: 0,
        payout_minimum: [(Currency::USD, Decimal::new(50, 0))].into(),
        min_click_age_ms: 0,
    }
}

/// Runs the steps through the book, as the API and the worker would, and
/// answers the ledger.
fn ledger_of(steps: &[Step]) -> Vec<LedgerEntry> {
    let rules = rules();
    let partner = PartnerId::parse("acme").unwrap();
    let mut now = Utc.with_ymd_and_hms(2026, 1, 20, 12, 0, 0).unwrap();
    let mut book = Book::default();
    let mut ledger = Vec::new();
    let mut open: Vec<Payout> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Earn(kind, cents) => {
                let amount = Decimal::new(*cents, 2);
                book.totals.entry(Currency::USD).or_default().available += amount;
                book.entries += 1;
                ledger.push(entry(book.entries, *kind, amount, now));
            }
            Step::RequestPayout => {
                let id = PayoutId::new(now.timestamp_millis() + i as i64);
                let email = Some("pay@acme.example");
                if let Ok(changes) =
                    request_payout(&book, &rules, &partner, email, &id, Currency::USD, now)
                {
                    book = changes.book;
                    ledger.extend(changes.entries);
                    open.extend(changes.payouts);
                }
            }
            Step::Settle(paid) => {
                if open.is_empty() {
                    continue;
                }
                let payout = open.remove(0);
                let settlement = if *paid {
                    Settlement::Paid {
                        reference: format!("ref{i}"),
                    }
                } else {
                    Settlement::Failed {
                        reason: "returned".into(),
                    }
                };
                let changes = settle_payout(&book, &payout, &settlement, now).unwrap();
                book = changes.book;
                ledger.extend(changes.entries);
            }
            Step::Wait(hours) => now += Duration::hours(*hours),
        }
    }
    ledger
}

fn entry(seq: u64, kind: EntryKind, amount: Decimal, now: DateTime<Utc>) -> LedgerEntry {
    LedgerEntry {
        seq,
        id: format!("e{seq}"),
        kind,
        customer: Some("cus_1".into()),
        amount,
        currency: Currency::USD,
        at: now - Duration::days(3),
        available_at: now,
        posted_at: Some(now),
        payout_amount: None,
        note: None,
    }
}

/// The model: balance and in-payout from the entries posted before `end`.
fn model_at(ledger: &[LedgerEntry], end: DateTime<Utc>) -> (Decimal, Decimal) {
    let mut balance = Decimal::ZERO;
    let mut in_payout = Decimal::ZERO;
    for e in ledger.iter().filter(|e| e.posted_at.unwrap() < end) {
        balance += e.amount;
        let payout = e.payout_amount.unwrap_or_default();
        match e.kind {
            EntryKind::PayoutRequested => in_payout += payout,
            EntryKind::PayoutPaid | EntryKind::PayoutFailed => in_payout -= payout,
            _ => {}
        }
    }
    (balance, in_payout)
}

fn usd(figures: &[CurrencyStatement]) -> CurrencyStatement {
    figures
        .iter()
        .find(|c| c.currency == Some(Currency::USD))
        .cloned()
        .unwrap_or_default()
}

/// The case: a payout paid in January, its commission clawed back
/// in February. January closes at 0 with the payout paid; February shows
/// the clawback and closes below zero.
#[test]
fn a_clawback_after_a_paid_payout_shows_in_the_next_month() {
    let ledger = ledger_of(&[
        Step::Earn(EntryKind::Commission, 6_000),
        Step::RequestPayout,
        Step::Settle(true),
        Step::Wait(24 * 20),
        Step::Earn(EntryKind::Clawback, -6_000),
    ]);
    let statement = |month: &str| {
        let mut builder = StatementBuilder::new(Month::parse(month).unwrap());
        for e in &ledger {
            builder.add(e);
        }
        builder.finish()
    };
    let january = statement("2026-01");
    let jan = usd(&january.currencies);
    assert_eq!(jan.commissions, Decimal::new(6_000, 2));
    assert_eq!(jan.payouts_requested, Decimal::new(-6_000, 2));
    assert_eq!(jan.paid, Decimal::new(6_000, 2));
    assert_eq!(jan.closing_balance, Decimal::new(0, 2));
    assert_eq!(jan.closing_in_payout, Decimal::new(0, 2));
    assert_eq!(january.lines.len(), 3);
    let february = statement("2026-02");
    let feb = usd(&february.currencies);
    assert_eq!(feb.opening_balance, Decimal::new(0, 2));
    assert_eq!(feb.clawbacks, Decimal::new(-6_000, 2));
    assert_eq!(feb.closing_balance, Decimal::new(-6_000, 2));
    assert_eq!(february.lines.len(), 1);
    assert_eq!(february.lines[0].kind, EntryKind::Clawback);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn statements_add_up_month_after_month(
        steps in prop::collection::vec(step(), 1..120),
        shuffle in any::<u64>(),
    ) {
        let ledger = ledger_of(&steps);
        // The store pages the ledger newest first; the order fed in must
        // not matter.
        let mut fed = ledger.clone();
        let turn = (shuffle as usize) % fed.len().max(1);
        fed.rotate_left(turn);
        let first = Month::parse("2026-01").unwrap();
        let mut previous: Option<CurrencyStatement> = None;
        let mut seen_lines = BTreeMap::new();
        // Every month from the first to the one of the last entry.
        let last = ledger.iter().filter_map(|e| e.posted_at).max().unwrap_or(first.start());
        let months = (0..).map(|n| Month::of(first.start() + chrono::Months::new(n)));
        for month in months.take_while(|m| m.start() <= last) {
            let mut builder = StatementBuilder::new(month);
            for e in &fed {
                builder.add(e);
            }
            let statement = builder.finish();
            let c = usd(&statement.currencies);
            let zero = Decimal::ZERO;
            prop_assert_eq!(
                c.opening_balance + c.commissions + c.clawbacks + c.adjustments
                    + c.payouts_requested + c.payouts_failed,
                c.closing_balance
            );
            prop_assert_eq!(
                c.opening_in_payout + c.requested - c.paid - c.failed,
                c.closing_in_payout
            );
            let (balance, in_payout) = model_at(&ledger, month.end());
            if !statement.currencies.is_empty() {
                prop_assert_eq!(c.closing_balance, balance);
                prop_assert_eq!(c.closing_in_payout, in_payout);
            }
            prop_assert!(c.commissions >= zero && c.clawbacks <= zero);
            prop_assert!(c.payouts_requested <= zero && c.payouts_failed >= zero);
            prop_assert!(c.closing_in_payout >= zero);
            if let Some(previous) = &previous {
                prop_assert_eq!(previous.closing_balance, c.opening_balance);
                prop_assert_eq!(previous.closing_in_payout, c.opening_in_payout);
            }
            for line in &statement.lines {
                prop_assert_eq!(Month::of(line.posted_at.unwrap()), month);
                prop_assert!(seen_lines.insert(line.seq, ()).is_none());
            }
            prop_assert!(statement.lines.windows(2).all(|w| w[0].seq < w[1].seq));
            previous = Some(c);
        }
        prop_assert_eq!(seen_lines.len(), ledger.len(), "every entry in one month");
    }
}
