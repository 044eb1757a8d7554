//! Rego that OPA accepts but regorus reads differently, made to compile and
//! run as OPA runs it. Gatekeeper repositories are written for OPA, and
//! `tollgate test` is held to `opa test` (webhook/tests/opa_parity.rs).
//!
//! - [`version`]: which Rego a file is (v0 or v1), per file, and why.
//! - [`normalise`]: source rewrites before compiling, found with regorus's
//!   own lexer: v0 rules with several bodies (`p[x] { … } { … }`) become
//!   one rule per body, and a newline before `(` ends the statement.
//! - [`sprintf`]: OPA's `sprintf` (Go's fmt), which prints
//!   `%!v(MISSING)` for a verb without an argument where regorus's fails.
//!
//! What this must never do: change what a module means to OPA, move a line
//! (errors and coverage keep their line numbers), or drop a construct
//! without a word — what it cannot rewrite is an error naming the construct
//! and its line. Each workaround has a test pinning the regorus behaviour
//! it covers (`regorus_still_*`), which fails when regorus changes, telling
//! us to remove the workaround.

pub mod normalise;
pub mod sprintf;
pub mod version;

pub use normalise::{Normalised, Rewrite, normalise};
pub use version::{Detected, RegoVersion, detect};
