//! Code the benchmark binaries share: the HTTP client side of the load
//! generators (`proxy-load`, `load`), JWT fixtures, readings from `/proc`,
//! the points of a sweep given on the command line, the Gatekeeper
//! constraints the admission benchmarks load, and Kyverno started beside
//! a test control plane.

pub mod client;
pub mod constraints;
pub mod jwt;
pub mod kyverno;
pub mod peer;
pub mod procfs;
pub mod sweep;
