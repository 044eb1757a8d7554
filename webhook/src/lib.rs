//! Tollgate's admission webhook: decoding AdmissionReviews, evaluating Rego
//! policies, and serving both over HTTPS.

pub mod admission;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod metrics;
pub mod mutate;
pub mod pod_security;
pub mod policy;
pub mod review;
pub mod serve;
pub mod server;
pub mod teams;
pub mod trace;
pub mod walk;
