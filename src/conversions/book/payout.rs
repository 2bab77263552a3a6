//! A payout: the whole available balance of a currency, or the reason
//! it is refused.

use super::*;

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
