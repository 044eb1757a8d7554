//! Authorization: who may use a route, decided on the verified identity
//! (the JWT's claims, the peer's SPIFFE ID) and the request (method,
//! path). The layer sits after rate limiting and reads the route's
//! compiled rules from the request's one route match (`route.rs`).
//!
//! - [`config`]: a route's `authorization` in `proxy.yaml`, its checks,
//!   and the default workspace profile.
//! - [`rules`]: the compiled rules and their evaluation (DENY, AUDIT,
//!   ALLOW).
//! - [`layer`]: the tower layer, its metrics
//!   (`tollgate_authz_decisions_total{route,decision,rule}`) and its log.
//!
//! A refused request gets 403 (gRPC: `PERMISSION_DENIED`) with
//! `x-tollgate-reason: authz-denied` (a deny rule matched) or
//! `authz-not-allowed` (the route has allow rules and none matched); the
//! body names the rule class and the route, never a claim's value.

pub mod config;
pub mod layer;
pub mod rules;

pub use config::AuthorizationConfig;
pub use layer::{AuthzLayer, AuthzMetrics};
pub use rules::{Authorization, Decision, Input};

#[cfg(test)]
mod tests;
