//! The audit: what objects that already exist violate.
//!
//! Admission only sees what is applied from now on; the audit judges what
//! is already there, with the same policies, exemptions, namespace labels
//! and team resolution ([`crate::admission::Admission::audit`]). Each
//! object is judged as a CREATE review of itself.
//!
//! - [`kinds`]: which kinds the loaded policies and constraints judge, so
//!   only those are listed.
//! - [`judge`]: a page of objects judged on worker threads.
//! - [`tally`]: what a pass found, counted per policy, team and namespace,
//!   with the listed violations capped so that memory stays flat however
//!   large the cluster.
//!
//! Where the objects come from: manifest files (`tollgate audit -f`), or
//! the cluster, listed page by page ([`crate::cluster::audit_list`]). What a
//! pass leads to: the CLI's report ([`crate::cli::audit`]), or, in the
//! server, metrics, log lines and OpenReports `Report`s
//! ([`crate::cluster::audit_loop`], [`crate::cluster::audit_reports`]).

pub mod judge;
pub mod kinds;
pub mod metrics;
pub mod tally;

/// The object a result is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Subject {
    pub fn of(object: &serde_json::Value) -> Subject {
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        Subject {
            api_version: text("/apiVersion"),
            kind: text("/kind"),
            namespace: text("/metadata/namespace"),
            name: text("/metadata/name"),
            uid: text("/metadata/uid"),
        }
    }

    /// `Deployment app-ml-team/trainer`, or `Namespace app-ml-team`.
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
