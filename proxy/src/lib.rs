//! `tollgate-proxy`: the sidecar in front of workspace and Flyte traffic.
//!
//! - [`config`]: `proxy.yaml`, checked with path-naming errors; the sidecar
//!   contract's environment variables override ports.
//! - [`listener`]: TLS accept (hot-reloaded certificate from
//!   `tollgate-certs`), the peer's SPIFFE ID, HTTP/1.1 and h2.
//! - [`stack`]: the request pipeline, top to bottom: finish → paths → body limit →
//!   route → identity → JWT → rate limit → authorization → WASM filters →
//!   forward.
//! - [`path`]: path normalisation (once, before any check; the normalised
//!   path is forwarded) and segment-boundary prefix matching.
//! - [`route`]: the one route table, matched once per request; the match
//!   rides on the request for every layer below.
//! - [`identity`]: per-route SPIFFE ID allow-lists.
//! - [`authz`]: per-route authorization rules on claims, peer, method and
//!   path; the default workspace profile.
//! - [`forward`]: header handling, upstream selection, upgrades.
//! - [`pool`]: connections to each upstream (hyper's `client::conn` on a
//!   pool of our own), HTTP/1.1 kept alive, h2 multiplexed.
//! - [`websocket`]: the frame cap on the client side of WebSocket splices.
//! - [`errors`]: the one place errors become responses (gRPC statuses for
//!   gRPC requests).
//! - [`body`]: streamed, counted, capped bodies.
//! - [`admin`]: `/live`, `/ready`, `/metrics`, `POST /shutdown`.
//! - [`metrics`]: the Prometheus registry.
//! - [`drain`]: the shutdown signal and the drain.
//! - [`run`]: the lifecycle that ties them together.

pub mod admin;
pub mod authz;
pub mod body;
pub mod config;
pub mod drain;
pub mod errors;
pub mod filters;
pub mod forward;
pub mod identity;
pub mod jwt;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod pool;
pub mod ratelimit;
pub mod route;
pub mod run;
pub mod stack;
pub mod trace;
pub mod websocket;
