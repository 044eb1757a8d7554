//! Pod Security Standards: which level and version apply to a namespace in
//! each of Pod Security Admission's modes, read from PSA's own namespace
//! labels (`pod-security.kubernetes.io/enforce`, `-warn`, `-audit` and their
//! `-version`s) as the apiserver reads them, over the team's default from
//! the config. The `pod_security` policies (policies/pod_security/) judge
//! a pod at each mode's level; the mutation fills what the strictest level
//! requires. This module only resolves; it never judges a pod.

use std::fmt;

use serde::Deserialize;

use crate::teams::Labels;

/// The newest version the bundled checks know (Kubernetes v1.37): `latest`,
/// and any newer `v1.N`, mean this one, as in PSA.
pub const LATEST_MINOR: u32 = 37;

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// The namespace label with which PSA itself enforces a level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The bundled `pod_security` policies, one per PSA check (procMount and
/// seccompProfile each judge their baseline and restricted checks).
pub const POLICIES: [&str; 17] = [
    "allow_privilege_escalation",
    "app_armor_profile",
    "capabilities_baseline",
    "capabilities_restricted",
    "host_namespaces",
    "host_path_volumes",
    "host_ports",
    "host_probes_and_lifecycle",
    "privileged",
    "proc_mount",
    "run_as_non_root",
    "run_as_user",
    "se_linux_options",
    "seccomp_profile",
    "sysctls",
    "volume_types",
    "windows_host_process",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    #[default]
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(text: &str) -> Option<Level> {
        match text {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// `latest` or `v1.N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct Version {
    /// `None` is `latest`.
    minor: Option<u32>,
}

impl Version {
    pub const LATEST: Version = Version { minor: None };

    pub fn v1(minor: u32) -> Version {
        Version { minor: Some(minor) }
    }

    fn parse(text: &str) -> Option<Version> {
        if text == "latest" {
            return Some(Version::LATEST);
        }
        let digits = text.strip_prefix("v1.")?;
        // PSA's `^v1\.(0|[1-9][0-9]*)$`.
        let canonical = digits == "0" || (!digits.starts_with('0') && !digits.is_empty());
        if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Version::v1)
    }

    /// The version of the checks that apply: newer than the checks know is
    /// the newest they know.
    pub fn effective_minor(self) -> u32 {
        self.minor.map_or(LATEST_MINOR, |m| m.min(LATEST_MINOR))
    }
}

impl TryFrom<String> for Version {
    type Error = String;

    fn try_from(text: String) -> Result<Version, String> {
        Version::parse(&text).ok_or_else(|| format!("{text:?}: must be \"latest\" or \"v1.N\""))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.minor {
            None => f.write_str("latest"),
            Some(m) => write!(f, "v1.{m}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl LevelVersion {
    pub const RESTRICTED_LATEST: LevelVersion = LevelVersion {
        level: Level::Restricted,
        version: Version::LATEST,
    };

    /// Stricter level first, then the newer version.
    fn strictness(&self) -> (Level, u32) {
        (self.level, self.version.effective_minor())
    }
}

/// A team's default, for namespaces without PSA labels (config:
/// `teams.defaults.podSecurity`, `teams.overrides.<team>.podSecurity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityDefaults {
    #[serde(default = "baseline")]
    pub enforce: Level,
    #[serde(default)]
    pub enforce_version: Version,
    #[serde(default)]
    pub warn: Level,
    #[serde(default)]
    pub warn_version: Version,
    #[serde(default = "restricted")]
    pub audit: Level,
    #[serde(default)]
    pub audit_version: Version,
}

fn baseline() -> Level {
    Level::Baseline
}
fn restricted() -> Level {
    Level::Restricted
}

impl Default for PodSecurityDefaults {
    /// `baseline` enforced (what the bundled library always denied:
    /// privileged containers, host namespaces and paths, and the rest of
    /// baseline), `restricted` audited, both `latest`.
    fn default() -> Self {
        PodSecurityDefaults {
            enforce: Level::Baseline,
            enforce_version: Version::LATEST,
            warn: Level::Privileged,
            warn_version: Version::LATEST,
            audit: Level::Restricted,
            audit_version: Version::LATEST,
        }
    }
}

/// The level and version of each mode, for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub enforce: LevelVersion,
    pub warn: LevelVersion,
    pub audit: LevelVersion,
}

impl From<&PodSecurityDefaults> for NamespacePolicy {
    fn from(d: &PodSecurityDefaults) -> Self {
        let lv = |level, version| LevelVersion { level, version };
        NamespacePolicy {
            enforce: lv(d.enforce, d.enforce_version),
            warn: lv(d.warn, d.warn_version),
            audit: lv(d.audit, d.audit_version),
        }
    }
}

impl NamespacePolicy {
    /// The policy of a namespace with `labels`, over `defaults`, as PSA's
    /// `PolicyToEvaluate` reads them: an invalid enforce level is
    /// `restricted` (fail closed), an invalid warn or audit level is
    /// `privileged`, an invalid version is `latest`; without a warn label,
    /// warn is raised to a stricter enforce label (and its version).
    pub fn resolve(labels: Option<&Labels>, defaults: &PodSecurityDefaults) -> NamespacePolicy {
        let mut policy = NamespacePolicy::from(defaults);
        let Some(labels) = labels else {
            return policy;
        };
        let label = |suffix: &str| labels.get(&format!("{LABEL_PREFIX}{suffix}"));
        let version = |mode: &str, default: Version| {
            label(&format!("{mode}-version"))
                .map_or(default, |v| Version::parse(v).unwrap_or(Version::LATEST))
        };
        let enforce_label = label("enforce");
        if let Some(level) = enforce_label {
            policy.enforce.level = Level::parse(level).unwrap_or(Level::Restricted);
        }
        policy.enforce.version = version("enforce", policy.enforce.version);
        for (mode, lv) in [("audit", &mut policy.audit), ("warn", &mut policy.warn)] {
            if let Some(level) = label(mode) {
                lv.level = Level::parse(level).unwrap_or(Level::Privileged);
            }
            lv.version = version(mode, lv.version);
        }
        let valid_enforce = enforce_label.is_some_and(|l| Level::parse(l).is_some());
        if label("warn").is_none() && valid_enforce && policy.enforce.level > policy.warn.level {
            policy.warn.level = policy.enforce.level;
            if label("warn-version").is_none() {
                policy.warn.version = policy.enforce.version;
            }
        }
        policy
    }

    /// What the mutation fills for: the strictest of the three modes, so
    /// that a mutated pod is neither denied, warned about nor audited.
    pub fn strictest(&self) -> LevelVersion {
        [self.enforce, self.warn, self.audit]
            .into_iter()
            .max_by_key(LevelVersion::strictness)
            .unwrap_or_default()
    }

    /// The policies' `input.namespace`: `{"name", "labels", "podSecurity":
    /// {"enforce": {"level": "restricted", "version": "latest", "minor": 37},
    /// "warn": …, "audit": …}}`.
    pub fn input(&self, namespace: &str, labels: Option<&Labels>) -> regorus::Value {
        regorus::Value::from(serde_json::json!({
            "name": namespace,
            "labels": labels.cloned().unwrap_or_default(),
            "podSecurity": self.to_json(),
        }))
    }

    fn to_json(self) -> serde_json::Value {
        let mode = |lv: &LevelVersion| {
            serde_json::json!({
                "level": lv.level.as_str(),
                "version": lv.version.to_string(),
                "minor": lv.version.effective_minor(),
            })
        };
        serde_json::json!({
            "enforce": mode(&self.enforce),
            "warn": mode(&self.warn),
            "audit": mode(&self.audit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn lv(level: Level, version: Version) -> LevelVersion {
        LevelVersion { level, version }
    }

    #[test]
    fn without_labels_the_team_default_applies() {
        let d = PodSecurityDefaults::default();
        let p = NamespacePolicy::resolve(None, &d);
        assert_eq!(p.enforce, lv(Level::Baseline, Version::LATEST));
        assert_eq!(p.warn, lv(Level::Privileged, Version::LATEST));
        assert_eq!(p.audit, lv(Level::Restricted, Version::LATEST));
        assert_eq!(p, NamespacePolicy::resolve(Some(&Labels::new()), &d));
    }

    #[test]
    fn labels_override_the_default_mode_by_mode() {
        let l = labels(&[
            ("enforce", "restricted"),
            ("enforce-version", "v1.30"),
            ("audit", "baseline"),
        ]);
        let p = NamespacePolicy::resolve(Some(&l), &PodSecurityDefaults::default());
        assert_eq!(p.enforce, lv(Level::Restricted, Version::v1(30)));
        assert_eq!(p.audit, lv(Level::Baseline, Version::LATEST));
        // No warn label: warn follows a stricter enforce label, version too.
        assert_eq!(p.warn, lv(Level::Restricted, Version::v1(30)));
    }

    #[test]
    fn invalid_labels_fail_closed_for_enforce_and_open_for_warn_and_audit() {
        let l = labels(&[
            ("enforce", "strict"),
            ("enforce-version", "1.30"),
            ("warn", "nope"),
            ("audit", "x"),
            ("audit-version", "v1.030"),
        ]);
        let p = NamespacePolicy::resolve(Some(&l), &PodSecurityDefaults::default());
        assert_eq!(p.enforce, lv(Level::Restricted, Version::LATEST));
        assert_eq!(p.warn.level, Level::Privileged);
        assert_eq!(p.audit, lv(Level::Privileged, Version::LATEST));
    }

    #[test]
    fn an_explicit_warn_label_is_kept_even_when_weaker() {
        let l = labels(&[("enforce", "restricted"), ("warn", "privileged")]);
        let p = NamespacePolicy::resolve(Some(&l), &PodSecurityDefaults::default());
        assert_eq!(p.warn.level, Level::Privileged);
    }

    #[test]
    fn versions_newer_than_the_checks_mean_the_newest() {
        assert_eq!(Version::v1(99).effective_minor(), LATEST_MINOR);
        assert_eq!(Version::LATEST.effective_minor(), LATEST_MINOR);
        assert_eq!(Version::parse("v1.0"), Some(Version::v1(0)));
        assert_eq!(Version::parse("v1."), None);
        assert_eq!(Version::parse("v2.1"), None);
        assert_eq!(Version::v1(22).to_string(), "v1.22");
    }

    #[test]
    fn the_strictest_mode_is_the_highest_level_then_the_newest_version() {
        let l = labels(&[
            ("enforce", "baseline"),
            ("warn", "restricted"),
            ("warn-version", "v1.21"),
            ("audit", "restricted"),
            ("audit-version", "v1.25"),
        ]);
        let p = NamespacePolicy::resolve(Some(&l), &PodSecurityDefaults::default());
        assert_eq!(p.strictest(), lv(Level::Restricted, Version::v1(25)));
    }

    #[test]
    fn defaults_parse_from_config_yaml() {
        let d: PodSecurityDefaults =
            yaml_serde::from_str("enforce: restricted\nenforceVersion: v1.30\n").unwrap();
        assert_eq!(d.enforce, Level::Restricted);
        assert_eq!(d.enforce_version, Version::v1(30));
        assert_eq!(d.audit, Level::Restricted);
        let err = yaml_serde::from_str::<PodSecurityDefaults>("warnVersion: \"1.2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be \"latest\" or \"v1.N\""), "{err}");
    }
}
