//! lastclick: an affiliate click-tracking edge service.
//!
//! # Layout
//!
//! - [`config`]: settings from `config/default.toml`, a file and the environment
//! - [`ids`]: partner ids, campaign slugs and names, currency codes
//! - [`landing`]: the landing URL allowlist
//! - [`cookie`]: the signed attribution cookie, click and visitor ids
//! - [`cache`]: the in-process route cache the redirect reads
//! - [`redirect`]: the hot path, `/r/{partner}[/{campaign}]`
//! - [`edge`]: public connections: redirects straight off the socket, the
//!   rest through hyper
//! - [`clicks`]: the bounded click queue and its batch flusher
//! - [`store`]: the `Store` trait and the embedded store
//! - [`auth`]: bearer tokens and roles
//! - [`api`]: the `/v1` JSON API
//! - [`dashboard`]: `GET /dashboard`, the partner dashboard page
//! - [`events`]: conversion events and their validation
//! - [`customer`]: a referred customer's events and what they come to, in
//!   event-time order
//! - [`book`]: a partner's balances, ARR history and ledger, and how a
//!   batch of events or a payout changes them, whatever the order
//! - [`ingest`]: `lastclick ingest`, events from a JSON Lines file
//! - [`money`]: currencies, commission rounding, ARR and tiers
//! - [`report`]: the UTM performance report
//! - [`link`]: affiliate links
//! - [`metrics`]: Prometheus metrics
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`
//! - [`worker`]: applies conversion events to partners' books, exactly once
//! - [`serve`]: wiring, listeners and graceful shutdown

pub mod admin;
pub mod api;
pub mod auth;
pub mod book;
pub mod cache;
pub mod clicks;
pub mod config;
pub mod cookie;
pub mod customer;
pub mod dashboard;
pub mod edge;
pub mod events;
pub mod ids;
pub mod ingest;
pub mod landing;
pub mod link;
pub mod metrics;
pub mod money;
pub mod redirect;
pub mod report;
pub mod serve;
pub mod store;
pub mod worker;
