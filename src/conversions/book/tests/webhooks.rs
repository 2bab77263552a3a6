//! The webhook events a book step reports (`webhooks::outbox`): one per
//! attributed customer, per ledger line of a customer's money, per payout
//! status and per tier change; none for a step that changes nothing; the
//! same ids for the same changes.

use super::*;
use serde_json::json;

use crate::webhooks::WebhookEventType as Type;

impl Kept {
    /// Commits a payout or hold step and answers the events it reports;
    /// the step read the customers it writes, as every step does.
    fn commit_reporting(
        &mut self,
        changes: &Changes,
        rules: &Rules,
        now: DateTime<Utc>,
    ) -> Vec<OutboxEvent> {
        let request = BookRequest {
            customers: changes.customers.iter().map(|c| c.id.clone()).collect(),
            ..BookRequest::default()
        };
        let before = outbox::Before::of(&self.view(&request), rules, now);
        self.commit(changes);
        outbox::events(&acme(), &before, changes, rules, now)
    }
}

fn kinds(events: &[OutboxEvent]) -> Vec<Type> {
    events.iter().map(|e| e.kind).collect()
}

fn body(event: &OutboxEvent) -> serde_json::Value {
    serde_json::from_str(&event.body).unwrap()
}

#[test]
fn each_change_is_one_event_and_a_repeat_is_none() {
    let rules = rules(0);
    let mut kept = Kept::default();
    let first = [
        signup("s1", "c1", Billing::Referral, 0),
        payment("p1", "c1", "300", 1),
    ];
    let sent = kept.apply(&first, &rules, at(2));
    assert_eq!(
        kinds(&sent),
        [Type::CustomerAttributed, Type::CommissionCreated]
    );
    let created = body(&sent[1]);
    assert_eq!(created["id"], sent[1].id);
    assert_eq!(created["type"], "commission.created");
    assert_eq!(created["partner"], "acme");
    assert_eq!(created["data"]["amount"], "60.00");
    assert_eq!(created["data"]["seq"], 1);
    assert_eq!(body(&sent[0])["data"]["campaign"], "spring");

    // The same events again change nothing, and report nothing.
    assert!(kept.apply(&first, &rules, at(3)).is_empty());

    let refunded = kept.apply(&[refund("r1", "c1", "p1", "100", 3)], &rules, at(3));
    assert_eq!(kinds(&refunded), [Type::CommissionClawedBack]);
    assert_eq!(body(&refunded[0])["data"]["amount"], "-20.00");

    // 500 a month is 6,000 of ARR: silver.
    let silver = kept.apply(
        &[
            signup("s2", "c2", Billing::Referral, 4),
            payment("p2", "c2", "500", 4),
        ],
        &rules,
        at(5),
    );
    assert_eq!(
        kinds(&silver),
        [
            Type::CustomerAttributed,
            Type::CommissionCreated,
            Type::PartnerTierChanged
        ]
    );
    let tier = body(&silver[2]);
    assert_eq!(
        (&tier["data"]["from"], &tier["data"]["to"]),
        (&json!("bronze"), &json!("silver"))
    );

    let requested = payout(&kept.book, &rules, true, Currency::USD, at(6)).unwrap();
    let sent = kept.commit_reporting(&requested, &rules, at(6));
    assert_eq!(kinds(&sent), [Type::PayoutRequested]);
    assert_eq!(body(&sent[0])["data"]["status"], "requested");
    let paid = Settlement::Paid {
        reference: "PAYPAL-1".into(),
    };
    let settled = settle_payout(&kept.book, &requested.payouts[0], &paid, at(7)).unwrap();
    let sent = kept.commit_reporting(&settled, &rules, at(7));
    assert_eq!(kinds(&sent), [Type::PayoutPaid]);
}

#[test]
fn the_same_changes_get_the_same_ids_and_no_two_alike() {
    let rules = rules(0);
    let events = [
        signup("s1", "c1", Billing::Referral, 0),
        payment("p1", "c1", "300", 1),
        payment("p2", "c1", "300", 2),
        refund("r1", "c1", "p1", "300", 3),
    ];
    let ids = |events: &[Event]| -> Vec<String> {
        let mut kept = Kept::default();
        let sent = kept.apply(events, &rules, at(4));
        sent.into_iter().map(|e| e.id).collect()
    };
    let once = ids(&events);
    assert_eq!(once, ids(&events));
    let distinct: std::collections::BTreeSet<&String> = once.iter().collect();
    assert_eq!(distinct.len(), once.len(), "{once:?}");
    assert!(once
        .iter()
        .all(|id| id.starts_with("evt_") && id.len() == 28));
}

#[test]
fn a_held_customers_commission_is_held_and_its_rejection_clawed_back() {
    let rules = Rules {
        min_click_age_ms: 5_000,
        ..rules(0)
    };
    let mut kept = Kept::default();
    let sent = kept.apply(
        &[
            signup("s1", "c1", Billing::Referral, 0),
            payment("p1", "c1", "100", 0),
        ],
        &rules,
        at(1),
    );
    assert_eq!(
        kinds(&sent),
        [Type::CustomerAttributed, Type::CommissionHeld]
    );
    assert_eq!(body(&sent[0])["data"]["held"], true);
    let record = kept.customers["c1"].clone();
    let counts = kept.cells[&ConversionCell::of(&record.referral)].clone();
    let decision = crate::conversions::hold::HoldDecision::Reject;
    let rejected = decide_hold(&kept.book, &record, &counts, decision, &rules, at(2)).unwrap();
    let sent = kept.commit_reporting(&rejected, &rules, at(2));
    assert_eq!(kinds(&sent), [Type::CommissionClawedBack]);
    assert_eq!(body(&sent[0])["data"]["kind"], "hold_rejected");
}
