//! A partner's monthly statement: per currency, the balance at the start
//! of a UTC month, what moved it, and the balance at its end, with the
//! month's ledger lines. Built from the ledger alone, entry by entry, so
//! opening + movements = closing by construction, and a month that is
//! over never changes (entries belong to the month they were posted in).
//!
//! The balance is what the partner has earned and not yet taken into a
//! payout (pending and available): commissions add, clawbacks take away,
//! adjustments go either way, a requested payout takes its amount away and
//! a failed one gives it back. What is in payout has its own opening and
//! closing: requests add, paid and failed payouts take away.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::conversions::book::LedgerEntry;
use crate::conversions::customer::EntryKind;
use crate::conversions::money::Currency;

/// Lines a statement shows at most; its figures count every entry.
pub const MAX_LINES: usize = 5_000;

/// A UTC calendar month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    /// `YYYY-MM`, years 2000 to 2999.
    pub fn parse(text: &str) -> Option<Month> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let year: i32 = year.parse().ok().filter(|y| (2000..3000).contains(y))?;
        let first = NaiveDate::from_ymd_opt(year, month.parse().ok()?, 1)?;
        Some(Month { first })
    }

    pub fn of(at: DateTime<Utc>) -> Month {
        let day = at.date_naive();
        Month {
            first: day.with_day(1).unwrap_or(day),
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        self.first.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The first moment after the month.
    pub fn end(self) -> DateTime<Utc> {
        (self.first + Months::new(1))
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.first.year(), self.first.month())
    }
}

/// One currency's figures for the month. Balance movements are signed as
/// they change the balance; payout amounts are positive.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CurrencyStatement {
    pub currency: Option<Currency>,
    pub opening_balance: Decimal,
    pub commissions: Decimal,
    pub clawbacks: Decimal,
    pub adjustments: Decimal,
    pub payouts_requested: Decimal,
    pub payouts_failed: Decimal,
    pub closing_balance: Decimal,
    pub opening_in_payout: Decimal,
    /// Amounts requested this month (they enter `in_payout`).
    pub requested: Decimal,
    /// Amounts sent this month (they leave `in_payout`).
    pub paid: Decimal,
    /// Amounts that failed this month (back to the balance).
    pub failed: Decimal,
    pub closing_in_payout: Decimal,
}

impl CurrencyStatement {
    /// Adds an entry posted before the month to the opening figures.
    fn open(&mut self, entry: &LedgerEntry) {
        let (balance, in_payout) = effects(entry);
        self.opening_balance += balance;
        self.opening_in_payout += in_payout.requested - in_payout.paid - in_payout.failed;
    }

    /// Adds an entry posted in the month to its movements.
    fn record(&mut self, entry: &LedgerEntry) {
        let amount = entry.amount;
        match entry.kind {
            EntryKind::Commission => self.commissions += amount,
            EntryKind::Clawback => self.clawbacks += amount,
            // A rejected hold takes commissions back: a correction.
            EntryKind::Adjustment | EntryKind::HoldRejected => self.adjustments += amount,
            EntryKind::Payout | EntryKind::PayoutRequested => self.payouts_requested += amount,
            EntryKind::PayoutFailed => self.payouts_failed += amount,
            EntryKind::PayoutPaid | EntryKind::HoldReleased => {}
        }
        let (_, moved) = effects(entry);
        self.requested += moved.requested;
        self.paid += moved.paid;
        self.failed += moved.failed;
    }

    fn close(&mut self, currency: Currency) {
        self.closing_balance = self.opening_balance
            + self.commissions
            + self.clawbacks
            + self.adjustments
            + self.payouts_requested
            + self.payouts_failed;
        self.closing_in_payout = self.opening_in_payout + self.requested - self.paid - self.failed;
        for figure in [
            &mut self.opening_balance,
            &mut self.commissions,
            &mut self.clawbacks,
            &mut self.adjustments,
            &mut self.payouts_requested,
            &mut self.payouts_failed,
            &mut self.closing_balance,
            &mut self.opening_in_payout,
            &mut self.requested,
            &mut self.paid,
            &mut self.failed,
            &mut self.closing_in_payout,
        ] {
            *figure = currency.shown(*figure);
        }
    }
}

/// A payout entry's amounts into and out of payout.
#[derive(Default)]
struct PayoutMoves {
    requested: Decimal,
    paid: Decimal,
    failed: Decimal,
}

/// What an entry does to the balance, and to what is in payout.
fn effects(entry: &LedgerEntry) -> (Decimal, PayoutMoves) {
    let payout = entry.payout_amount.unwrap_or_else(|| -entry.amount);
    let moves = match entry.kind {
        EntryKind::PayoutRequested => PayoutMoves {
            requested: payout,
            ..PayoutMoves::default()
        },
        EntryKind::PayoutPaid => PayoutMoves {
            paid: payout,
            ..PayoutMoves::default()
        },
        EntryKind::PayoutFailed => PayoutMoves {
            failed: payout,
            ..PayoutMoves::default()
        },
        // An earlier version's payout: requested and paid at once.
        EntryKind::Payout => PayoutMoves {
            requested: payout,
            paid: payout,
            failed: Decimal::ZERO,
        },
        _ => PayoutMoves::default(),
    };
    (entry.amount, moves)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statement {
    pub month: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub currencies: Vec<CurrencyStatement>,
    /// The month's entries, oldest first (at most `MAX_LINES`).
    pub lines: Vec<LedgerEntry>,
    pub lines_truncated: bool,
}

/// Builds a month's statement from ledger entries fed in any order.
pub struct StatementBuilder {
    month: Month,
    currencies: BTreeMap<Currency, CurrencyStatement>,
    lines: Vec<LedgerEntry>,
    more_lines: bool,
}

impl StatementBuilder {
    pub fn new(month: Month) -> Self {
        StatementBuilder {
            month,
            currencies: BTreeMap::new(),
            lines: Vec::new(),
            more_lines: false,
        }
    }

    pub fn add(&mut self, entry: &LedgerEntry) {
        let posted = entry.posted_at.unwrap_or(entry.at);
        if posted >= self.month.end() {
            return;
        }
        let figures = self.currencies.entry(entry.currency).or_default();
        if posted < self.month.start() {
            figures.open(entry);
            return;
        }
        figures.record(entry);
        if self.lines.len() < MAX_LINES {
            self.lines.push(entry.clone());
        } else {
            self.more_lines = true;
        }
    }

    pub fn finish(self) -> Statement {
        let mut lines = self.lines;
        lines.sort_by_key(|e| e.seq);
        let currencies = self
            .currencies
            .into_iter()
            .map(|(currency, mut figures)| {
                figures.currency = Some(currency);
                figures.close(currency);
                figures
            })
            .collect();
        Statement {
            month: self.month.to_string(),
            from: self.month.start(),
            to: self.month.end(),
            currencies,
            lines,
            lines_truncated: self.more_lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        let march = Month::parse("2026-03").unwrap();
        assert_eq!(march.to_string(), "2026-03");
        assert_eq!(march.start().to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(march.end().to_rfc3339(), "2026-04-01T00:00:00+00:00");
        let december = Month::parse("2026-12").unwrap();
        assert_eq!(december.end().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        for bad in [
            "2026-13",
            "2026-3",
            "26-03",
            "2026-00",
            "1999-01",
            "2026-03-01",
            "",
        ] {
            assert!(Month::parse(bad).is_none(), "{bad}");
        }
        let late = "2026-03-31T23:59:59Z".parse().unwrap();
        assert_eq!(Month::of(late), march);
    }
}
