//! A hold's decision on the partner's book, one step with its ledger
//! entries: released, the held customer's commissions take their usual
//! place (available, or pending for `commission.hold_days`); rejected,
//! they are taken back, and the customer earns the partner nothing more.

use super::*;
use crate::conversions::hold::{HoldDecision, HoldStatus};

/// Why a decision cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldConflict {
    #[error("customer `{0}` has no hold")]
    NotHeld(String),
    #[error("the hold of customer `{0}` was already {1}")]
    Decided(String, &'static str),
}

/// What the ledger posted for a customer, per currency: for a held
/// customer, what waits on hold.
pub fn posted_amounts(customer: &Customer, rules: &Rules) -> BTreeMap<Currency, Decimal> {
    let derived = customer.derive(rules.terms());
    let mut sums: BTreeMap<Currency, Decimal> = BTreeMap::new();
    for (source, amount) in &customer.posted {
        if let Some(owed) = derived.owed.get(source) {
            *sums.entry(owed.currency).or_default() += amount;
        }
    }
    sums
}

/// The change that releases or rejects `customer`'s hold: the book, the
/// customer's record, its report cell (`cell`, as loaded) on a reject,
/// and one ledger entry per currency the customer earned in.
pub fn decide_hold(
    book: &Book,
    customer: &Customer,
    cell: &ConversionCounts,
    decision: HoldDecision,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<Changes, HoldConflict> {
    let Some(hold) = &customer.hold else {
        return Err(HoldConflict::NotHeld(customer.id.clone()));
    };
    if hold.status != HoldStatus::Held {
        let decided = HoldConflict::Decided(customer.id.clone(), hold.status.as_str());
        return Err(decided);
    }
    let now_ms = now.timestamp_millis();
    let mut book = book.clone();
    let mut decided = customer.clone();
    let derived = customer.derive(rules.terms());
    let mut sums: BTreeMap<Currency, Decimal> = BTreeMap::new();
    for (source, amount) in &customer.posted {
        let Some(owed) = derived.owed.get(source) else {
            continue;
        };
        let totals = book.totals.entry(owed.currency).or_default();
        totals.put_on_hold(-*amount);
        if decision == HoldDecision::Release {
            totals.credit(*amount, owed.available_at, now_ms);
        }
        *sums.entry(owed.currency).or_default() += amount;
    }
    let (status, kind) = match decision {
        HoldDecision::Release => (HoldStatus::Released, EntryKind::HoldReleased),
        HoldDecision::Reject => (HoldStatus::Rejected, EntryKind::HoldRejected),
    };
    let mut entries = Vec::with_capacity(sums.len());
    for (currency, sum) in sums {
        // A release moves money within the balance: its entry is 0 and
        // says how much moved; a reject takes the sum away.
        let amount = if kind == EntryKind::HoldRejected {
            -sum
        } else {
            Decimal::ZERO
        };
        let money = Money::new(amount, currency);
        let mut entry = book.entry(&customer.id, kind, Some(&customer.id), money);
        entry.at = now;
        entry.available_at = now;
        entry.posted_at = Some(now);
        entry.note = Some(format!(
            "fast_signup {}: {} {currency}",
            status.as_str(),
            currency.shown(sum)
        ));
        entries.push(entry);
    }
    let held = decided.hold.as_mut().expect("checked above");
    held.status = status;
    held.decided_at = Some(now_ms);
    let mut cells = Vec::new();
    let counts = apply::counts_of(&decided, &derived);
    if counts != decided.counts {
        let mut moved = cell.clone();
        moved.replace(&decided.counts, &counts);
        cells.push((ConversionCell::of(&decided.referral), moved));
        decided.counts = counts;
    }
    Ok(Changes {
        book,
        customers: vec![decided],
        cells,
        entries,
        ..Changes::default()
    })
}
