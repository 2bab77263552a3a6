//! lastclick: an affiliate click-tracking edge service.
//!
//! # Layout
//!
//! Arrows run one way: the wiring starts the edge, the API and the worker;
//! they use the domain rules; everything reaches the store through the
//! [`store::Store`] trait.
//!
//! - [`edge`]: what a visitor's click touches: connections, the redirect,
//!   the route cache, the cookie, the landing allowlist, the click queue
//! - [`conversions`]: events, the worker, customers, books and the money
//!   rules: from a merchant's event to a partner's ledger entry
//! - [`report`]: the UTM performance report; [`csv`]: the one CSV writer,
//!   safe for spreadsheets
//! - [`api`]: the `/v1` JSON API, its tokens and roles, and the two pages
//!   (the partner dashboard, the admin console)
//! - [`store`]: the `Store` trait and its two stores, SQLite (embedded) and
//!   Redis
//! - [`webhooks`]: webhook endpoints, the events they subscribe to, how
//!   deliveries are signed, the outbox a book step writes them to, and the
//!   delivery task
//! - [`ids`]: partner ids, campaign slugs and names, click, visitor,
//!   event and customer ids
//! - [`json`]: strict JSON input (no key twice in one object)
//! - [`low_priority`]: the threads that build reports at the lowest CPU
//!   priority
//! - [`fuzz`]: the fuzz targets' entry points, also replayed by the tests
//! - wiring: [`serve`] (listeners, tasks, graceful shutdown), [`admin`]
//!   (`/metrics`, `/healthz`, `/readyz`), [`metrics`], [`config`],
//!   [`logs`]

pub mod admin;
pub mod api;
pub mod config;
pub mod conversions;
pub mod csv;
pub mod edge;
pub mod fuzz;
pub mod ids;
pub mod json;
pub mod logs;
pub mod low_priority;
pub mod metrics;
pub mod report;
pub mod serve;
pub mod store;
pub mod webhooks;
