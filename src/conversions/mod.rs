//! Conversions: from a merchant's event to a partner's ledger entry.
//!
//! - [`events`]: conversion events and their validation
//! - [`ingest`]: `lastclick ingest`, events from a JSON Lines file
//! - [`worker`]: takes events from the store's queue, routes each to its
//!   customer's partner, applies each partner's events to its book, exactly
//!   once
//! - [`customer`]: a referred customer's events and what they come to, in
//!   event-time order
//! - [`book`]: a partner's balances, ARR history and ledger, and how a
//!   batch of events or a payout changes them, whatever the order
//! - [`explain`]: why a visitor's other clicks did not win its customer
//! - [`hold`]: click-to-signup timing, and commissions held for a
//!   signup that came too soon after its click
//! - [`money`]: currencies, commission rounding, ARR and tiers
//! - [`statement`]: a partner's monthly statement, from its ledger
//! - [`step`]: one optimistic step on a book (load, compute, commit if
//!   unchanged), for the worker and payouts alike

pub mod book;
pub mod customer;
pub mod events;
pub mod explain;
pub mod hold;
pub mod ingest;
pub mod money;
pub mod statement;
pub mod step;
pub mod worker;
