//! The edge: what a visitor's click touches, from the socket to the click
//! queue. Nothing here waits on a store.
//!
//! - [`connections`]: the public listener's connections; plain redirects
//!   are answered straight off the socket, the rest handed to hyper
//! - [`redirect`]: `/r/{partner}[/{campaign}]`, the hot path
//! - [`cache`]: the in-process route cache the redirect reads
//! - [`cookie`]: the signed attribution cookie, click and visitor ids
//! - [`fetch`]: how the browser says a request was made (the cookie-stuffing
//!   guard)
//! - [`landing`]: the landing URL allowlist
//! - [`clicks`]: the bounded click queue and its batch flusher
//! - [`traffic`]: bot and suspect requests, tallied for the report
//! - [`link`]: affiliate links as partners share them

pub mod cache;
pub mod clicks;
pub mod connections;
pub mod cookie;
pub mod fetch;
mod head;
pub mod landing;
pub mod link;
pub mod redirect;
pub mod terms;
pub mod traffic;

pub use connections::{http1_builder, serve_connection, Load, PublicInner, PublicService};
