//! The Rego engine: policies are loaded and compiled once, then every
//! admission request is evaluated against each policy whose match applies.
//!
//! The policy contract (docs/policies.md has the long form):
//! - a policy is a module in `package tollgate.<name>` that defines
//!   `violation` as a set of objects with a `msg` (Gatekeeper's shape);
//! - it reads `input.review` (the AdmissionRequest) and `input.parameters`
//!   (from the config's `policies.overrides.<name>.parameters`, else `{}`);
//! - it may define `match := {"kinds": [...]}`: the request kinds
//!   (`request.kind.kind`) it applies to; without it, all kinds.
//!
//! Concurrency: each worker thread keeps its own clone of the prepared
//! engine (see [`evaluate`]); benches/README.md has the measurements that
//! chose this over cloning per request.

mod bytecode;
pub mod decision_cache;
mod evaluate;
pub mod gatekeeper;
mod load;
pub mod rego_compat;
pub mod testing;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub(crate) use evaluate::input as evaluate_input;
pub use evaluate::{Finding, Outcome};
pub use load::warmup_request;
pub use load::{
    LoadError, Source, bundled_sources, sources_from_dirs, sources_with_tests_from_dirs,
};

use crate::config::Enforcement;

/// Turns off the backtraces that library errors capture, unless
/// `RUST_LIB_BACKTRACE` asks for them. regorus builds `anyhow` errors as
/// control flow while it evaluates, and with `RUST_BACKTRACE=1` in the
/// environment each one captures a backtrace: 3.5 % of a served review's
/// CPU samples (benches/README.md, issue 22). Panics still print theirs under
/// `RUST_BACKTRACE`. Call it first in `main`, before any thread starts.
pub fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called by `main` before it starts any thread, so nothing
        // reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// One compiled policy and how it is enforced.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `<name>` of `package tollgate.<name>`.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    pub enforcement: Enforcement,
    /// The request kinds it applies to; `None` is all kinds.
    pub kinds: Option<BTreeSet<String>>,
    /// `input.parameters`.
    parameters: regorus::Value,
    /// `data.tollgate.<name>.violation`.
    rule: String,
}

/// Native policies with equal `parameters`, evaluated together by one
/// generated rule (`data.tollgate_aggregate.g<N>.results`, an object from
/// policy name to its `violation` set), so that the library helpers they
/// share run once per request rather than once per policy. Which members
/// are evaluated is `input.tollgate_policies` (the kind's matches).
#[derive(Debug, Clone)]
struct Group {
    parameters: regorus::Value,
    /// Indices into `PolicySet::policies`, in order.
    members: Vec<usize>,
    rule: String,
}

impl Policy {
    /// Whether the policy applies to a request for `kind`.
    pub fn applies_to(&self, kind: &str) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(kind))
    }
}

/// A compiled, immutable set of policies, shared by all requests.
pub struct PolicySet {
    /// Distinguishes this set from any other loaded in this process, so that
    /// per-thread engine clones know when they are stale.
    generation: u64,
    /// Prepared (evaluated once at load), so clones skip analysis.
    engine: regorus::Engine,
    policies: Vec<Policy>,
    /// Whether an outcome depends only on what the decision cache's key
    /// covers: no policy reads the clock, randomness or the network.
    cacheable: bool,
    /// The policies grouped by `parameters` (see [`Group`]).
    groups: Vec<Group>,
    /// Whether requests are evaluated by group (else one `eval_rule` per
    /// policy, as before: the baseline of the benchmark and the
    /// differential test).
    grouped: bool,
    /// Each group's rule compiled for regorus's bytecode VM, when
    /// [`PolicySet::with_bytecode`] asked for it (see [`bytecode`]: not
    /// used by the server). Empty: every group on the interpreter.
    programs: Vec<Option<bytecode::GroupProgram>>,
    /// Gatekeeper templates, each with its own engine.
    templates: Vec<gatekeeper::CompiledTemplate>,
    /// Constraints, each with the index of its template.
    constraints: Vec<(gatekeeper::Constraint, usize)>,
    /// What loading skipped or noticed, for the operator.
    notices: Vec<String>,
}

impl PolicySet {
    /// This set's generation: distinct for every set loaded in the process.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether outcomes may be cached ([`decision_cache`]): false when a
    /// policy calls a builtin whose answer is not a function of its input
    /// (`time.now_ns`, `http.send`, `rand.*`, `uuid.rfc4122`,
    /// `opa.runtime`, `net.lookup_ip_addr`).
    pub fn cacheable(&self) -> bool {
        self.cacheable
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub fn constraints(&self) -> impl Iterator<Item = &gatekeeper::Constraint> {
        self.constraints.iter().map(|(c, _)| c)
    }

    pub fn templates(&self) -> &[gatekeeper::CompiledTemplate] {
        &self.templates
    }

    /// Native policies plus constraints: what can produce findings.
    pub fn len(&self) -> usize {
        self.policies.len() + self.constraints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The same set evaluating one `eval_rule` per policy, as before policies
    /// were grouped: for the benchmark and the differential test.
    #[doc(hidden)]
    pub fn ungrouped(mut self) -> PolicySet {
        self.grouped = false;
        self
    }

    /// The same set with each group that compiles to regorus's bytecode
    /// VM evaluated there: for the benchmark only, as regorus 0.14.1's VM
    /// decides some requests wrongly (see [`bytecode`]). Returns how many
    /// of the groups compiled.
    #[doc(hidden)]
    pub fn with_bytecode(mut self) -> (PolicySet, usize) {
        self.programs = self
            .groups
            .iter()
            .map(|g| bytecode::GroupProgram::compile(&self.engine, &g.rule).ok())
            .collect();
        let compiled = self.programs.iter().flatten().count();
        (self, compiled)
    }

    /// How many native policy groups the set has.
    #[doc(hidden)]
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The policies that apply to a request for `kind`.
    pub fn matching<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies.iter().filter(move |p| p.applies_to(kind))
    }
}
