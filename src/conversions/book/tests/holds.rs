//! Holds on the book: a signup too soon after its click keeps its
//! commissions pending until released or rejected, whatever the order
//! its events come in.

use super::*;
use crate::conversions::hold::{HoldDecision, HoldStatus};

/// The tests' rules with `attribution.min_click_age = 5s`.
fn held_rules() -> Rules {
    Rules {
        min_click_age_ms: 5_000,
        ..rules(0)
    }
}

fn decide(
    kept: &mut Kept,
    customer: &str,
    decision: HoldDecision,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Result<(), HoldConflict> {
    let record = kept.customers[customer].clone();
    let cell = ConversionCell::of(&record.referral);
    let counts = kept.cells.get(&cell).cloned().unwrap_or_default();
    let changes = decide_hold(&kept.book, &record, &counts, decision, rules, now)?;
    kept.commit(&changes);
    Ok(())
}

fn usd(kept: &Kept, now: DateTime<Utc>) -> Balance {
    kept.book.balances(now).remove(0)
}

#[test]
fn a_fast_signup_is_credited_but_held_until_released() {
    let rules = held_rules();
    let mut kept = Kept::default();
    // The referral's click is at day 0: this signup comes 0 s after it.
    kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "100", 0),
        ],
        &rules,
        at(1),
    );
    let balance = usd(&kept, at(1));
    assert_eq!((balance.pending, balance.on_hold), (d("20"), d("20")));
    assert_eq!(balance.available, d("0"));
    assert_eq!(kept.ledger[0].note.as_deref(), Some(apply::HELD_NOTE));
    assert_eq!(kept.book.delays, vec![(at(0).timestamp_millis(), 0)]);

    decide(&mut kept, "c1", HoldDecision::Release, &rules, at(2)).unwrap();
    let balance = usd(&kept, at(2));
    assert_eq!((balance.available, balance.pending), (d("20"), d("0")));
    let released = kept.ledger.last().unwrap();
    assert_eq!(
        (released.kind, released.amount),
        (EntryKind::HoldReleased, d("0"))
    );
    // From now on the customer earns as any other.
    kept.apply(&[payment("p2", "c1", "100", 3)], &rules, at(3));
    assert_eq!(usd(&kept, at(3)).available, d("40"));
    let again = decide(&mut kept, "c1", HoldDecision::Reject, &rules, at(4));
    assert!(matches!(again, Err(HoldConflict::Decided(_, "released"))));
}

#[test]
fn a_rejected_hold_takes_the_commissions_back_and_earns_nothing_more() {
    let rules = held_rules();
    let mut kept = Kept::default();
    kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "100", 0),
            // A customer who signed up a day after the click: not held.
            signup("s2", "c2", Billing::Referral, 1),
            payment("p2", "c2", "50", 1),
        ],
        &rules,
        at(1),
    );
    decide(&mut kept, "c1", HoldDecision::Reject, &rules, at(2)).unwrap();
    let rejected = kept.ledger.last().unwrap();
    assert_eq!(
        (rejected.kind, rejected.amount),
        (EntryKind::HoldRejected, d("-20"))
    );
    assert_eq!(
        kept.customers["c1"].hold.as_ref().unwrap().status,
        HoldStatus::Rejected
    );
    kept.apply(
        &[
            payment("p3", "c1", "100", 3),
            refund("r1", "c1", "p1", "100", 3),
        ],
        &rules,
        at(3),
    );
    let balance = usd(&kept, at(3));
    assert_eq!((balance.available, balance.pending), (d("10"), d("0")));
    let c1_net: Decimal = kept
        .ledger
        .iter()
        .filter(|e| e.customer.as_deref() == Some("c1"))
        .map(|e| e.amount)
        .sum();
    assert_eq!(c1_net, d("0"));
    // The report shows only what is still earned.
    let commission: Decimal = kept
        .cells
        .values()
        .filter_map(|c| c.commission.get(&Currency::USD))
        .sum();
    assert_eq!(commission, d("10"));
}

#[test]
fn a_late_earlier_signup_that_came_too_soon_holds_what_was_already_posted() {
    let rules = held_rules();
    let events = vec![
        signup("s1", "c1", Billing::Referral, 1),
        payment("p1", "c1", "100", 2),
        // The customer's first signup, 0 s after the click, arriving in
        // any order.
        signup("s0", "c1", Billing::Referral, 0),
        signup("s9", "c9", Billing::Referral, 3),
        payment("p9", "c9", "10", 3),
    ];
    let mut reference = Kept::default();
    reference.apply(&events, &rules, at(10));
    assert!(reference.customers["c1"].is_held());
    assert_eq!(usd(&reference, at(10)).on_hold, d("20"));
    assert_eq!(usd(&reference, at(10)).available, d("2"));
    assert_eq!(reference.book.delays.len(), 2);
    for seed in 0..60 {
        let order = shuffled(&events, seed);
        let mut kept = Kept::default();
        for chunk in order.chunks(1 + seed as usize % 3) {
            kept.apply(chunk, &rules, at(10));
        }
        assert_eq!(kept.net(), reference.net(), "seed {seed}");
        assert_eq!(usd(&kept, at(10)), usd(&reference, at(10)), "seed {seed}");
        let mut delays = kept.book.delays.clone();
        delays.sort();
        let mut expected = reference.book.delays.clone();
        expected.sort();
        assert_eq!(delays, expected, "seed {seed}");
        assert_eq!(
            kept.customers["c1"].hold, reference.customers["c1"].hold,
            "seed {seed}"
        );
    }
}
