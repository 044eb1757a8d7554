//! Finding `.rego` sources and compiling them into a [`PolicySet`].
//!
//! All or nothing: any file that does not compile, any policy that fails its
//! warm-up evaluation, or any override naming no policy fails the whole load.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use include_dir::{Dir, include_dir};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::{Group, Policy, PolicySet};
use crate::config::PoliciesConfig;

/// The bundled library, compiled into the binary.
static BUNDLED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../policies");

/// A review every policy is evaluated against once at load, so that a
/// missing builtin or a runtime type error shows at start-up, not on the
/// first request.
const WARMUP_REVIEW: &str = include_str!("../../testdata/pod-compliant.json");

/// The AdmissionRequest every policy and template is evaluated against
/// once at load.
pub fn warmup_request() -> Value {
    // The review is ours and valid JSON; a unit test holds it to that.
    Value::from_json_str(WARMUP_REVIEW)
        .map(|review| review["request"].clone())
        .unwrap_or(Value::Undefined)
}

/// Package prefix that makes a module a policy.
const PACKAGE_PREFIX: &str = "data.tollgate.";
/// Builtins whose answer is not a function of the input: a set whose
/// sources mention one is never served from the decision cache. (A mention
/// in a comment counts too; the cost is only a missed cache.)
const NONDETERMINISTIC_BUILTINS: [&str; 6] = [
    "time.now_ns",
    "http.send",
    "rand.",
    "uuid.rfc4122",
    "opa.runtime",
    "net.lookup_ip_addr",
];
/// Where the generated group modules live: outside `tollgate.`, so that
/// they are never taken for policies.
const AGGREGATE_PACKAGE: &str = "tollgate_aggregate";

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// One `.rego` file's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading policies: {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// regorus's message starts with `file:line:col:` and shows the line.
    #[error("{0}")]
    Compile(String),
    #[error(
        "no policies found in {0} (a policy is a module in `package tollgate.<name>` that defines `violation`, or a Gatekeeper constraint with its ConstraintTemplate)"
    )]
    Empty(String),
    #[error("{file}: policy {policy}: {message}")]
    Invalid {
        file: PathBuf,
        policy: String,
        message: String,
    },
    /// A module that is neither a policy nor a library: it would have been
    /// loaded and never evaluated.
    #[error("{file}: {message}")]
    NotAPolicy { file: PathBuf, message: String },
    #[error("config policies.overrides.{0}: no such policy (loaded: {1})")]
    UnknownOverride(String, String),
    #[error(transparent)]
    Gatekeeper(#[from] super::gatekeeper::GatekeeperError),
}

/// The bundled library's policies (test files excluded).
pub fn bundled_sources() -> Vec<Source> {
    let mut out = Vec::new();
    collect_bundled(&BUNDLED, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn collect_bundled(dir: &Dir<'static>, out: &mut Vec<Source>) {
    for file in dir.files() {
        if is_policy_file(file.path())
            && let Some(text) = file.contents_utf8()
        {
            out.push(Source {
                path: Path::new("policies").join(file.path()),
                text: text.to_owned(),
            });
        }
    }
    for sub in dir.dirs() {
        collect_bundled(sub, out);
    }
}

/// Every policy file under `dirs`, recursively, in a stable order.
pub fn sources_from_dirs(dirs: &[PathBuf]) -> Result<Vec<Source>, LoadError> {
    read_sources(dirs, is_policy_file)
}

/// Every `.rego` file under `dirs`, the `*_test.rego` unit tests included.
pub fn sources_with_tests_from_dirs(dirs: &[PathBuf]) -> Result<Vec<Source>, LoadError> {
    read_sources(dirs, |p| crate::walk::has_extension(p, &["rego"]))
}

fn read_sources(dirs: &[PathBuf], wanted: fn(&Path) -> bool) -> Result<Vec<Source>, LoadError> {
    let mut paths = Vec::new();
    for dir in dirs {
        let found = crate::walk::files(dir, &wanted).map_err(|source| LoadError::Read {
            path: dir.clone(),
            source,
        })?;
        paths.extend(found);
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Source { path, text }),
            Err(source) => Err(LoadError::Read { path, source }),
        })
        .collect()
}

/// `.rego` files, except the `*_test.rego` unit tests beside them, and
/// YAML files (Gatekeeper ConstraintTemplates and constraints).
fn is_policy_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".rego") && !name.ends_with("_test.rego")) || is_yaml(path)
}

fn is_yaml(path: &Path) -> bool {
    crate::walk::has_extension(path, &["yaml", "yml"])
}

impl PolicySet {
    /// Compiles `sources` with the settings of `config`. `origin` names where
    /// the sources came from, for the error when there are no policies.
    pub fn compile(
        sources: &[Source],
        config: &PoliciesConfig,
        origin: &str,
    ) -> Result<PolicySet, LoadError> {
        PolicySet::compile_with_data(sources, config, None, origin)
    }

    /// Like [`PolicySet::compile`], with a data document the native
    /// policies can read (the platform's facts: `data.tollgate.config`).
    pub fn compile_with_data(
        sources: &[Source],
        config: &PoliciesConfig,
        data: Option<serde_json::Value>,
        origin: &str,
    ) -> Result<PolicySet, LoadError> {
        let mut engine = Engine::new();
        let data = match data {
            Some(data) => Some(
                Value::from_json_str(&data.to_string())
                    .map_err(|e| LoadError::Compile(format!("policy data: {e}")))?,
            ),
            None => None,
        };
        if let Some(value) = &data {
            engine
                .add_data(value.clone())
                .map_err(|e| LoadError::Compile(format!("policy data: {e}")))?;
        }
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: config.evaluation_timeout_ms,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        });
        // Candidate policies by name, with the file that declares `violation`
        // and whether the package declares `match`.
        let mut found: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
        let mut with_match = BTreeSet::new();
        // Every file of a policy package, to name one that defines no
        // `violation` anywhere in its package.
        let mut policy_files: Vec<(String, PathBuf)> = Vec::new();
        let (yaml, rego): (Vec<&Source>, Vec<&Source>) =
            sources.iter().partition(|s| is_yaml(&s.path));
        for source in rego {
            let package = add_source(&mut engine, source)?;
            let Some(name) = policy_name(&package, &source.path)? else {
                continue;
            };
            policy_files.push((name.to_owned(), source.path.clone()));
            let declares = |rule: &str| declares_rule(&engine, source, rule);
            if declares("match")? {
                with_match.insert(name.to_owned());
            }
            if declares("violation")? {
                found.insert(name.to_owned(), (source.path.clone(), false));
            }
        }
        if let Some((name, file)) = policy_files.iter().find(|(n, _)| !found.contains_key(n)) {
            return Err(LoadError::NotAPolicy {
                file: file.clone(),
                message: format!(
                    "package tollgate.{name} defines no `violation` rule, so it would never be evaluated (helpers belong in `package tollgate.lib.<name>`)"
                ),
            });
        }
        for (name, (_, has_match)) in found.iter_mut() {
            *has_match = with_match.contains(name);
        }
        let warmup_request = warmup_request();
        let yaml: Vec<Source> = yaml.into_iter().cloned().collect();
        let gatekeeper = super::gatekeeper::load(&yaml, &warmup_request, data.as_ref())?;
        if found.is_empty() && gatekeeper.constraints.is_empty() {
            return Err(LoadError::Empty(origin.to_owned()));
        }
        if let Some(unknown) = config.overrides.keys().find(|k| !found.contains_key(*k)) {
            let names: Vec<&str> = found.keys().map(String::as_str).collect();
            return Err(LoadError::UnknownOverride(
                unknown.clone(),
                names.join(", "),
            ));
        }

        let mut policies = Vec::with_capacity(found.len());
        for (name, (file, has_match)) in found {
            let invalid = |message: String| LoadError::Invalid {
                file: file.clone(),
                policy: name.clone(),
                message,
            };
            let overrides = config.overrides.get(&name).cloned().unwrap_or_default();
            let parameters = match overrides.parameters {
                Some(json) => Value::from_json_str(&json.to_string())
                    .map_err(|e| invalid(format!("parameters: {e}")))?,
                None => Value::new_object(),
            };
            let kinds = if has_match {
                let rule = format!("{PACKAGE_PREFIX}{name}.match");
                let value = engine
                    .eval_rule(rule)
                    .map_err(|e| invalid(format!("evaluating match: {e}")))?;
                Some(parse_kinds(&value).map_err(invalid)?)
            } else {
                None
            };
            let policy = Policy {
                rule: format!("{PACKAGE_PREFIX}{name}.violation"),
                name: name.clone(),
                file: file.clone(),
                enforcement: overrides.enforcement.unwrap_or_default(),
                kinds,
                parameters,
            };
            engine.set_input(super::evaluate::input(&warmup_request, &policy.parameters));
            let result = engine.eval_rule(policy.rule.clone()).map_err(|e| {
                invalid(format!(
                    "warm-up evaluation failed: {}",
                    compile_message(&e.to_string())
                ))
            })?;
            super::evaluate::messages(&result)
                .map_err(|e| invalid(format!("warm-up evaluation: {e}")))?;
            policies.push(policy);
        }
        let groups = add_groups(&mut engine, &policies, &warmup_request)?;
        let cacheable = !sources.iter().any(|s| {
            NONDETERMINISTIC_BUILTINS
                .iter()
                .any(|builtin| s.text.contains(builtin))
        });
        Ok(PolicySet {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            engine,
            policies,
            groups,
            grouped: true,
            programs: Vec::new(),
            cacheable,
            templates: gatekeeper.templates,
            constraints: gatekeeper.constraints,
            notices: gatekeeper.notices,
        })
    }
}

/// Groups the policies by `parameters` and adds each group's generated
/// module, warmed up on the warm-up request with every member selected.
fn add_groups(
    engine: &mut Engine,
    policies: &[Policy],
    warmup_request: &Value,
) -> Result<Vec<Group>, LoadError> {
    let mut groups: Vec<Group> = Vec::new();
    for (index, policy) in policies.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| g.parameters == policy.parameters)
        {
            Some(group) => group.members.push(index),
            None => groups.push(Group {
                parameters: policy.parameters.clone(),
                members: vec![index],
                rule: format!("data.{AGGREGATE_PACKAGE}.g{}.results", groups.len()),
            }),
        }
    }
    for (n, group) in groups.iter().enumerate() {
        let mut module = format!(
            "# Generated by tollgate: policies with equal parameters, evaluated together.\n\
             package {AGGREGATE_PACKAGE}.g{n}\n\nimport rego.v1\n\n"
        );
        // One complete rule per member (`{}` when not selected, or when its
        // `violation` is undefined), joined: eval_rule takes complete rules.
        let mut parts = Vec::with_capacity(group.members.len());
        for (k, &i) in group.members.iter().enumerate() {
            let name = &policies[i].name;
            module.push_str(&format!(
                "p{k} := {{\"{name}\": v}} if {{\n\tinput.tollgate_policies[\"{name}\"]\n\tv := data.tollgate.{name}.violation\n}} else := {{}}\n\n"
            ));
            parts.push(format!("p{k}"));
        }
        module.push_str(&format!(
            "results := object.union_n([{}])\n",
            parts.join(", ")
        ));
        let generated = |message: String| {
            LoadError::Compile(format!("generated group {n} of policies: {message}"))
        };
        engine
            .add_policy(format!("<generated>/{AGGREGATE_PACKAGE}/g{n}.rego"), module)
            .map_err(|e| generated(e.to_string()))?;
        let members: Vec<&Policy> = group.members.iter().map(|&i| &policies[i]).collect();
        engine.set_input(super::evaluate::group_input(
            warmup_request,
            &group.parameters,
            &Value::Undefined,
            &members,
        ));
        engine
            .eval_rule(group.rule.clone())
            .map_err(|e| generated(format!("warm-up evaluation failed: {e}")))?;
    }
    Ok(groups)
}

/// regorus reports a parse error as `--> file:line:col`, the source line with
/// a caret, then `error: message`. Tools and people expect the location
/// first, so this turns it into `file:line:col: message` followed by the
/// excerpt. Text of any other shape is passed on as it is.
pub(super) fn compile_message(raw: &str) -> String {
    let lines: Vec<&str> = raw.trim().lines().collect();
    let location = lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("--> "));
    let message = lines.iter().rev().find_map(|l| l.strip_prefix("error: "));
    match (location, message) {
        (Some(location), Some(message)) => {
            let excerpt: Vec<&str> = lines
                .iter()
                .filter(|l| !l.trim_start().starts_with("-->") && !l.starts_with("error: "))
                .copied()
                .collect();
            format!("{}: {message}\n{}", location.trim(), excerpt.join("\n"))
        }
        _ => raw.trim().to_owned(),
    }
}

/// The policy a module of `package` belongs to: `Some(name)` for
/// `tollgate.<name>`, `None` for a library (`tollgate.lib…`) or a unit
/// test file (`*_test.rego`), and an error naming the file for any other
/// package, which would be loaded and never evaluated.
fn policy_name<'a>(package: &'a str, file: &Path) -> Result<Option<&'a str>, LoadError> {
    let is_test = file
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with("_test.rego"));
    let name = package.strip_prefix(PACKAGE_PREFIX);
    if is_test || name.is_some_and(|n| n == "lib" || n.starts_with("lib.")) {
        return Ok(None);
    }
    match name {
        Some(name) if !name.is_empty() && !name.contains('.') => Ok(Some(name)),
        _ => Err(LoadError::NotAPolicy {
            file: file.to_owned(),
            message: format!(
                "package {} is neither a policy (`package tollgate.<name>`) nor a library (`package tollgate.lib.<name>`), so it would never be evaluated",
                package.strip_prefix("data.").unwrap_or(package)
            ),
        }),
    }
}

/// Parses `source` (Rego v1) into `engine`, rewritten where regorus would
/// read it otherwise than OPA ([`super::rego_compat::normalise`]: lines
/// kept), so the webhook runs a policy as `tollgate test` and `opa test`
/// judge it; returns its package (`data.<path>`).
pub(super) fn add_source(engine: &mut Engine, source: &Source) -> Result<String, LoadError> {
    let label = source.path.display().to_string();
    let normalised =
        super::rego_compat::normalise(&label, &source.text, super::rego_compat::RegoVersion::V1)
            .map_err(|e| LoadError::Compile(e.to_string()))?;
    engine
        .add_policy(label, normalised.text)
        .map_err(|e| LoadError::Compile(compile_message(&e.to_string())))
}

/// Whether `source`'s module declares a rule named `rule`.
pub(super) fn declares_rule(
    engine: &Engine,
    source: &Source,
    rule: &str,
) -> Result<bool, LoadError> {
    let label = source.path.display().to_string();
    engine
        .has_declared_rule_rooted_at(&label, rule)
        .map_err(|e| LoadError::Compile(format!("{label}: {e}")))
}

/// `match := {"kinds": ["Pod", ...]}`.
fn parse_kinds(value: &Value) -> Result<BTreeSet<String>, String> {
    let kinds = &value["kinds"];
    let shape = || "match must be an object like {\"kinds\": [\"Pod\"]}".to_owned();
    let array = kinds.as_array().map_err(|_| shape())?;
    array
        .iter()
        .map(|k| k.as_string().map(|s| s.to_string()).map_err(|_| shape()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str, text: &str) -> Source {
        Source {
            path: PathBuf::from(path),
            text: text.to_owned(),
        }
    }

    fn compile(sources: &[Source]) -> Result<PolicySet, LoadError> {
        PolicySet::compile(sources, &PoliciesConfig::default(), "test")
    }

    const GOOD: &str = "package tollgate.good\n\nviolation contains {\"msg\": \"no\"} if input.review.object.bad\n";

    #[test]
    fn the_bundled_library_compiles_with_its_match_rules() {
        let set = compile(&bundled_sources()).unwrap();
        let names: Vec<&str> = set.policies().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "allow_privilege_escalation",
                "allowed_registries",
                "app_armor_profile",
                "capabilities_baseline",
                "capabilities_restricted",
                "gpu_quota",
                "host_namespaces",
                "host_path_volumes",
                "host_ports",
                "host_probes_and_lifecycle",
                "image_tag",
                "privileged",
                "proc_mount",
                "resource_limits",
                "run_as_non_root",
                "run_as_user",
                "se_linux_options",
                "seccomp_profile",
                "service_type",
                "sysctls",
                "team_label",
                "volume_types",
                "windows_host_process"
            ]
        );
        assert_eq!(
            set.matching("Service")
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["service_type"]
        );
        assert_eq!(set.matching("CronJob").count(), 22);
        assert_eq!(set.matching("ConfigMap").count(), 0);
    }

    #[test]
    fn a_syntax_error_names_file_line_and_column_and_nothing_loads() {
        let bad = "package tollgate.bad\n\nviolation contains {\"msg\": m} if {\n\tm := \n}\n";
        let err = compile(&[source("p/good.rego", GOOD), source("p/bad.rego", bad)])
            .err()
            .unwrap();
        let message = err.to_string();
        assert!(
            message.starts_with("p/bad.rego:4:7: expecting `}` while parsing set\n"),
            "location first: {message}"
        );
        assert!(message.contains("4 | \tm := "), "excerpt: {message}");
    }

    #[test]
    fn an_unknown_builtin_fails_at_load_not_on_the_first_request() {
        let bad = "package tollgate.bad\n\nviolation contains {\"msg\": m} if {\n\tm := no_such_builtin(input.review)\n}\n";
        let message = compile(&[source("p/bad.rego", bad)])
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.starts_with(
                "p/bad.rego: policy bad: warm-up evaluation failed: p/bad.rego:4:25: could not find function no_such_builtin\n"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_violation_of_the_wrong_shape_fails_at_load() {
        let bad = "package tollgate.bad\n\nviolation := \"nope\"\n";
        let message = compile(&[source("p/bad.rego", bad)])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            message,
            "p/bad.rego: policy bad: warm-up evaluation: violation must be a set of {\"msg\": ...} objects, got a string"
        );
    }

    #[test]
    fn an_override_for_a_missing_policy_is_an_error() {
        let mut config = PoliciesConfig::default();
        config
            .overrides
            .insert("privilegd".into(), Default::default());
        let err = PolicySet::compile(&[source("p/good.rego", GOOD)], &config, "test")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "config policies.overrides.privilegd: no such policy (loaded: good)"
        );
    }

    #[test]
    fn modules_that_would_never_be_evaluated_are_load_errors() {
        // Issue 28: these were skipped without a word.
        let err = compile(&[
            source("p/good.rego", GOOD),
            source("p/x.rego", "package lib\n\nx := 1\n"),
        ])
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "p/x.rego: package lib is neither a policy (`package tollgate.<name>`) nor a library (`package tollgate.lib.<name>`), so it would never be evaluated"
        );
        let no_violation =
            "package tollgate.typo\n\nviolations contains {\"msg\": \"x\"} if true\n";
        let err = compile(&[
            source("p/good.rego", GOOD),
            source("p/typo.rego", no_violation),
        ])
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("p/typo.rego: package tollgate.typo defines no `violation` rule"),
            "{err}"
        );
        // Libraries, a policy split over two files, and unit tests load.
        let helper = "package tollgate.good\n\nbad_thing if input.review.object.bad\n";
        let set = compile(&[
            source("p/good.rego", GOOD),
            source("p/good_helpers.rego", helper),
            source("p/lib/util.rego", "package tollgate.lib.util\n\nx := 1\n"),
            source(
                "p/good_test.rego",
                "package tollgate.good_test\n\ntest_x if true\n",
            ),
        ])
        .unwrap();
        assert_eq!(set.policies.len(), 1);
    }

    #[test]
    fn no_policies_is_an_error() {
        let err = compile(&[source(
            "p/lib.rego",
            "package tollgate.lib.helpers\n\nx := 1\n",
        )])
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "no policies found in test (a policy is a module in `package tollgate.<name>` that defines `violation`, or a Gatekeeper constraint with its ConstraintTemplate)"
        );
    }

    #[test]
    fn a_policy_failing_in_its_group_is_named_and_its_group_still_decides() {
        let set = compile(&[
            source(
                "p/named.rego",
                "package tollgate.named\nimport rego.v1\nviolation contains {\"msg\": \"unnamed\"} if not input.review.object.metadata.name\n",
            ),
            source(
                "p/boom.rego",
                "package tollgate.boom\nimport rego.v1\nviolation contains {\"msg\": \"big\"} if to_number(input.review.object.metadata.labels.boom) > 1\n",
            ),
        ])
        .unwrap();
        assert_eq!(set.groups.len(), 1, "equal parameters share one group");
        let review = |labels: serde_json::Value| {
            Value::from_json_str(
                &serde_json::json!({"object": {"metadata": {"labels": labels}}}).to_string(),
            )
            .unwrap()
        };
        let findings = |review: &Value| {
            set.evaluate(review, "Pod")
                .findings
                .into_iter()
                .map(|f| (f.policy, f.message))
                .collect::<Vec<_>>()
        };
        let boom = findings(&review(serde_json::json!({"boom": "not a number"})));
        assert_eq!(boom.len(), 2, "{boom:?}");
        assert_eq!(boom[0].0, "boom");
        assert!(
            boom[0].1.starts_with("policy failed to evaluate"),
            "{boom:?}"
        );
        assert_eq!(boom[1], ("named".to_owned(), "unnamed".to_owned()));
        assert_eq!(
            findings(&review(serde_json::json!({"boom": "2"}))),
            vec![
                ("boom".to_owned(), "big".to_owned()),
                ("named".to_owned(), "unnamed".to_owned())
            ]
        );
    }

    #[test]
    fn a_reused_thread_engine_gives_each_request_its_own_answer() {
        let set = compile(&bundled_sources()).unwrap();
        let review = |text: &str| {
            crate::review::Request::decode(text.as_bytes())
                .unwrap()
                .document
        };
        let bad = review(include_str!("../../testdata/pod-privileged.json"));
        let good = review(include_str!("../../testdata/pod-compliant.json"));
        for _ in 0..3 {
            assert_eq!(set.evaluate(&bad, "Pod").findings.len(), 3);
            assert_eq!(set.evaluate(&good, "Pod").findings, vec![]);
        }
        assert_eq!(
            set.evaluate_on_clone(&bad, "Pod").findings,
            set.evaluate(&bad, "Pod").findings
        );
    }
}
