//! Code the benchmark binaries share: the HTTP client side of the load
//! generators (`proxy-load`, `load`), JWT fixtures, readings from `/proc`,
//! the points of a sweep given on the command line, and the Gatekeeper
//! constraints the admission benchmarks load.

pub mod client;
pub mod constraints;
pub mod jwt;
pub mod procfs;
pub mod sweep;
