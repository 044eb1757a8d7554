//! Code the benchmark binaries share: the HTTP client side of the load
//! generators (`proxy-load`, `load`), JWT fixtures, readings from `/proc`,
//! and the points of a sweep given on the command line.

pub mod client;
pub mod jwt;
pub mod procfs;
pub mod sweep;
