//! The webhook events a book step reports, computed from what the step
//! read and what it commits, and written in that same commit (the outbox):
//! an event exists if and only if its change does, and a step the worker
//! repeats after a crash finds its change already made and reports nothing
//! again.
//!
//! Every id is derived from what it reports (the ledger line, the
//! customer, the payout and its status, the book's version), so a receiver
//! that sees one id twice is seeing a retry, never a second change.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::conversions::book::{BookView, Changes, LedgerEntry, PayoutStatus, Rules, HELD_NOTE};
use crate::conversions::customer::{Customer, EntryKind};
use crate::ids::PartnerId;
use crate::webhooks::WebhookEventType;

/// One event: the body is the exact JSON every delivery sends (and
/// signs), so a retry sends the same bytes; the stores keep the body
/// alone (`from_body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: String,
    pub kind: WebhookEventType,
    pub created_at: DateTime<Utc>,
    pub body: String,
}

impl OutboxEvent {
    /// An event read back from its body, the form the stores keep: the
    /// body carries the id, type and time (to the millisecond).
    pub fn from_body(body: String) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            kind: WebhookEventType,
            created_at: DateTime<Utc>,
        }
        let head: Head = serde_json::from_str(&body)?;
        Ok(OutboxEvent {
            id: head.id,
            kind: head.kind,
            created_at: head.created_at,
            body,
        })
    }
}

/// What the step read before it changed anything: enough to tell a
/// customer attributed by this step and a tier that changed with it. A
/// step reads every customer it writes (it derives the new record from
/// the stored one), so a customer it writes that had no signup in the
/// view had none before.
pub struct Before {
    tier: String,
    signed_up: BTreeSet<String>,
    version: u64,
}

impl Before {
    pub fn of(view: &BookView, rules: &Rules, now: DateTime<Utc>) -> Self {
        Before {
            tier: view.book.tier(rules, now).name.clone(),
            signed_up: view
                .customers
                .values()
                .filter(|c| c.signup.is_some())
                .map(|c| c.id.clone())
                .collect(),
            version: view.version,
        }
    }
}

/// The events `changes` report, in the order a receiver should see them:
/// attributions, then the ledger's lines in order, then payouts, then the
/// tier.
pub fn events(
    partner: &PartnerId,
    before: &Before,
    changes: &Changes,
    rules: &Rules,
    now: DateTime<Utc>,
) -> Vec<OutboxEvent> {
    let event = Envelope::new(partner, now);
    let mut out = Vec::new();
    for customer in &changes.customers {
        if customer.signup.is_some() && !before.signed_up.contains(&customer.id) {
            out.push(event.of(
                WebhookEventType::CustomerAttributed,
                &["customer", &customer.id],
                &attribution(customer),
            ));
        }
    }
    for entry in &changes.entries {
        if let Some(kind) = commission_type(entry) {
            let seq = entry.seq.to_string();
            out.push(event.of(kind, &["ledger", &seq], entry));
        }
    }
    for payout in &changes.payouts {
        let kind = match payout.status {
            PayoutStatus::Requested => WebhookEventType::PayoutRequested,
            PayoutStatus::Paid => WebhookEventType::PayoutPaid,
            PayoutStatus::Failed => WebhookEventType::PayoutFailed,
        };
        let key = ["payout", payout.id.as_str(), payout.status.as_str()];
        out.push(event.of(kind, &key, payout));
    }
    let tier = changes.book.tier(rules, now);
    if tier.name != before.tier {
        let version = (before.version + 1).to_string();
        let data = json!({
            "from": before.tier,
            "to": tier.name,
            "rate": tier.rate,
            "arr": changes.book.arr,
        });
        out.push(event.of(
            WebhookEventType::PartnerTierChanged,
            &["tier", &version],
            &data,
        ));
    }
    out
}

/// The commission event a ledger line is, if any. Every line that moves a
/// customer's money is one, so the amounts of a partner's commission
/// events add up to its ledger: a correction upwards is `created`, one
/// downwards and a rejected hold are `clawed_back` (each with its own
/// `kind`). A released hold moves nothing and sends nothing; payouts are
/// told by their own events.
fn commission_type(entry: &LedgerEntry) -> Option<WebhookEventType> {
    use WebhookEventType::*;
    match entry.kind {
        EntryKind::Commission if entry.note.as_deref() == Some(HELD_NOTE) => Some(CommissionHeld),
        EntryKind::Commission => Some(CommissionCreated),
        EntryKind::Adjustment if entry.amount.is_sign_negative() => Some(CommissionClawedBack),
        EntryKind::Adjustment => Some(CommissionCreated),
        EntryKind::Clawback | EntryKind::HoldRejected => Some(CommissionClawedBack),
        EntryKind::Payout
        | EntryKind::PayoutRequested
        | EntryKind::PayoutPaid
        | EntryKind::PayoutFailed
        | EntryKind::HoldReleased => None,
    }
}

/// A customer's attribution, as `GET /v1/customers/{id}/attribution`
/// shows its main fields.
fn attribution(customer: &Customer) -> serde_json::Value {
    let referral = &customer.referral;
    let signed_up_at = customer
        .signup
        .as_ref()
        .and_then(|s| Utc.timestamp_millis_opt(s.key.at).single());
    let coupon = referral.is_coupon();
    let click_at = (!coupon)
        .then(|| Utc.timestamp_opt(referral.click_at, 0).single())
        .flatten();
    json!({
        "customer": customer.id,
        "partner": referral.partner,
        "campaign": referral.campaign,
        "term": referral.term,
        "coupon": coupon.then_some(referral.term.as_deref()).flatten(),
        "click_at": click_at,
        "found_by": referral.found.as_ref().map(|f| f.by),
        "signed_up_at": signed_up_at,
        "held": customer.hold.is_some(),
    })
}

/// Builds events of one partner at one moment.
struct Envelope<'a> {
    partner: &'a PartnerId,
    now: DateTime<Utc>,
    /// `now` as the bodies show it, formatted once per step.
    created_at: String,
}

/// An event's body; `data` is serialized in place, not through a
/// `serde_json::Value` (a step may report thousands of ledger lines).
#[derive(Serialize)]
struct Body<'a, T: Serialize> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: WebhookEventType,
    created_at: &'a str,
    partner: &'a PartnerId,
    data: &'a T,
}

impl<'a> Envelope<'a> {
    fn new(partner: &'a PartnerId, now: DateTime<Utc>) -> Self {
        // To the millisecond, as the body shows it: the event reads back
        // the same from the stores.
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        Envelope {
            partner,
            now,
            created_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }

    fn of<T: Serialize>(&self, kind: WebhookEventType, key: &[&str], data: &T) -> OutboxEvent {
        let id = event_id(self.partner, key);
        let body = Body {
            id: &id,
            kind,
            created_at: &self.created_at,
            partner: self.partner,
            data,
        };
        let body = serde_json::to_string(&body).expect("events serialize to JSON");
        OutboxEvent {
            id,
            kind,
            created_at: self.now,
            body,
        }
    }
}

/// `evt_` and 24 hex digits of SHA-256 over the partner and what the event
/// reports: the same change always gets the same id.
pub fn event_id(partner: &PartnerId, key: &[&str]) -> String {
    let mut hash = Sha256::new();
    hash.update(partner.as_str().as_bytes());
    for part in key {
        hash.update([0]);
        hash.update(part.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(28);
    id.push_str("evt_");
    for byte in &hash.finalize()[..12] {
        id.push(HEX[usize::from(byte >> 4)] as char);
        id.push(HEX[usize::from(byte & 15)] as char);
    }
    id
}
