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
//! - [`money`]: currencies, commission rounding, ARR and tiers
//! - [`statement`]: a partner's monthly statement, from its ledger
//! - [`step`]: one optimistic step on a book (load, compute, commit if
//!   unchanged), for the worker and payouts alike

pub mod book;
pub mod customer;
pub mod events;
pub mod ingest;
pub mod money;
pub mod statement;
pub mod step;
pub mod worker;
