//! Code the benchmark binaries share: the HTTP client side of the load
//! generators (`proxy-load`, `load`), JWT fixtures, and readings from
//! `/proc`.

pub mod client;
pub mod jwt;
pub mod procfs;
