//! A payout: the whole available balance of a currency, or the reason
//! it is refused.

use super::*;

/// Why a payout is refused: the 422 reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayoutRefusal {
    #[error("the partner has no paypal_email")]
    NoPaypalEmail,
    #[error("{0} cannot be paid out (no payout.minimum for it)")]
    CurrencyNotPaid(Currency),
    #[error("the available balance {available} {currency} is below the minimum {minimum}")]
    BelowMinimum {
        currency: Currency,
        available: Decimal,
        minimum: Decimal,
    },
    #[error("there is no positive available balance in {0}")]
    NothingAvailable(Currency),
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
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Changes, PayoutRefusal> {
    if !has_paypal_email {
        return Err(PayoutRefusal::NoPaypalEmail);
    }
    let minimum = *rules
        .payout_minimum
        .get(&currency)
        .ok_or(PayoutRefusal::CurrencyNotPaid(currency))?;
    let mut book = book.clone();
    let totals = book.totals.entry(currency).or_default();
    totals.settle(now.timestamp_millis());
    let available = totals.available;
    if available <= Decimal::ZERO {
        return Err(PayoutRefusal::NothingAvailable(currency));
    }
    if available < minimum {
        return Err(PayoutRefusal::BelowMinimum {
            currency,
            available,
            minimum,
        });
    }
    totals.available = Decimal::ZERO;
    totals.paid += available;
    let mut entry = book.entry(
        id,
        EntryKind::Payout,
        None,
        Money::new(-available, currency),
    );
    entry.at = now;
    entry.available_at = now;
    Ok(Changes {
        book,
        entries: vec![entry],
        ..Changes::default()
    })
}
