//! A payout's lifecycle on the partner's book: requested for the whole
//! available balance of a currency (or the reason it is refused), then
//! paid or failed, each step one change of the book with its ledger entry.

use super::*;
use crate::ids::PartnerId;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayoutStatus {
    /// Waiting for the program team to send it.
    Requested,
    /// Sent; `reference` is PayPal's transaction id.
    Paid,
    /// Not sent or returned; the amount is available again.
    Failed,
}

impl PayoutStatus {
    pub const ALL: [PayoutStatus; 3] = [
        PayoutStatus::Requested,
        PayoutStatus::Paid,
        PayoutStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PayoutStatus::Requested => "requested",
            PayoutStatus::Paid => "paid",
            PayoutStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PayoutStatus> {
        PayoutStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A payout as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payout {
    pub id: PayoutId,
    pub partner: PartnerId,
    pub status: PayoutStatus,
    /// Positive: what the partner is sent.
    pub amount: Decimal,
    pub currency: Currency,
    /// The partner's PayPal email when the payout was requested.
    pub paypal_email: String,
    pub requested_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the program team records of a requested payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Sent, with PayPal's transaction id.
    Paid { reference: String },
    /// Not sent or returned, and why.
    Failed { reason: String },
}

impl Settlement {
    pub fn status(&self) -> PayoutStatus {
        match self {
            Settlement::Paid { .. } => PayoutStatus::Paid,
            Settlement::Failed { .. } => PayoutStatus::Failed,
        }
    }
}

/// A settlement of a payout that is no longer requested: the 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payout `{id}` is {current}; only a requested payout can become {wanted}")]
pub struct PayoutConflict {
    pub id: PayoutId,
    pub current: &'static str,
    pub wanted: &'static str,
}

/// A payout of the whole available balance of `currency` to
/// `paypal_email`: the book after it, its entry and its record.
pub fn request_payout(
    book: &Book,
    rules: &Rules,
    partner: &PartnerId,
    paypal_email: Option<&str>,
    id: &PayoutId,
    currency: Currency,
    now: DateTime<Utc>,
) -> Result<Changes, PayoutRefusal> {
    let paypal_email = paypal_email.ok_or(PayoutRefusal::NoPaypalEmail)?;
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
    totals.in_payout += available;
    let payout = Payout {
        id: id.clone(),
        partner: partner.clone(),
        status: PayoutStatus::Requested,
        amount: currency.shown(available),
        currency,
        paypal_email: paypal_email.to_owned(),
        requested_at: now,
        paid_at: None,
        reference: None,
        failed_at: None,
        reason: None,
    };
    let entry = payout_entry(
        &mut book,
        &payout,
        EntryKind::PayoutRequested,
        -available,
        now,
    );
    Ok(Changes {
        book,
        entries: vec![entry],
        payouts: vec![payout],
        ..Changes::default()
    })
}

/// `payout` paid or failed: the book after it, its entry and the record
/// in its new status. Only a requested payout settles.
pub fn settle_payout(
    book: &Book,
    payout: &Payout,
    settlement: &Settlement,
    now: DateTime<Utc>,
) -> Result<Changes, PayoutConflict> {
    if payout.status != PayoutStatus::Requested {
        return Err(PayoutConflict {
            id: payout.id.clone(),
            current: payout.status.as_str(),
            wanted: settlement.status().as_str(),
        });
    }
    let mut book = book.clone();
    let mut settled = payout.clone();
    settled.status = settlement.status();
    let totals = book.totals.entry(payout.currency).or_default();
    totals.in_payout -= payout.amount;
    let (kind, change) = match settlement {
        Settlement::Paid { reference } => {
            totals.paid += payout.amount;
            settled.paid_at = Some(now);
            settled.reference = Some(reference.clone());
            (EntryKind::PayoutPaid, Decimal::ZERO)
        }
        Settlement::Failed { reason } => {
            totals.available += payout.amount;
            settled.failed_at = Some(now);
            settled.reason = Some(reason.clone());
            (EntryKind::PayoutFailed, payout.amount)
        }
    };
    let mut entry = payout_entry(&mut book, payout, kind, change, now);
    entry.note = settled.reference.clone().or_else(|| settled.reason.clone());
    Ok(Changes {
        book,
        entries: vec![entry],
        payouts: vec![settled],
        ..Changes::default()
    })
}

/// The ledger entry of a payout's step: `change` to the balance.
fn payout_entry(
    book: &mut Book,
    payout: &Payout,
    kind: EntryKind,
    change: Decimal,
    now: DateTime<Utc>,
) -> LedgerEntry {
    let currency = payout.currency;
    let mut entry = book.entry(
        payout.id.as_str(),
        kind,
        None,
        Money::new(currency.shown(change), currency),
    );
    entry.at = now;
    entry.available_at = now;
    entry.posted_at = Some(now);
    entry.payout_amount = Some(payout.amount);
    entry
}
