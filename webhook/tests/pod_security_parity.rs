//! Parity with the apiserver's own Pod Security Admission, on PSA's own
//! fixtures: `tests/pod-security/build.sh` builds a writer of the pods that
//! PSA's fixture generator (k8s.io/pod-security-admission/test, the release
//! of the e2e control plane) says must pass or fail, for every check, level
//! and version; each is reviewed with `tollgate review` (validation only:
//! mutation off) in a namespace labelled for that level and version, and
//! Tollgate's verdict must equal PSA's, the denial coming from the policy
//! named after the failing check. docs/policies.md lists exceptions (none).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

/// PSA's check IDs and the `pod_security` policies that judge them.
const POLICY_OF_CHECK: &[(&str, &str)] = &[
    ("allowPrivilegeEscalation", "allow_privilege_escalation"),
    ("appArmorProfile", "app_armor_profile"),
    ("capabilities_baseline", "capabilities_baseline"),
    ("capabilities_restricted", "capabilities_restricted"),
    ("hostNamespaces", "host_namespaces"),
    ("hostPathVolumes", "host_path_volumes"),
    ("hostPorts", "host_ports"),
    ("hostProbesAndHostLifecycle", "host_probes_and_lifecycle"),
    ("privileged", "privileged"),
    ("procMount", "proc_mount"),
    ("procMount_restricted", "proc_mount"),
    ("restrictedVolumes", "volume_types"),
    ("runAsNonRoot", "run_as_non_root"),
    ("runAsUser", "run_as_user"),
    ("seLinuxOptions", "se_linux_options"),
    ("seccompProfile_baseline", "seccomp_profile"),
    ("seccompProfile_restricted", "seccomp_profile"),
    ("sysctls", "sysctls"),
    ("windowsHostProcess", "windows_host_process"),
];

/// Under `restricted`, PSA replaces these baseline checks with stricter
/// ones (from v1.0 and v1.22), whose policies then deny their fixtures.
const OVERRIDDEN_UNDER_RESTRICTED: &[(&str, &str)] = &[
    ("hostPathVolumes", "volume_types"),
    ("capabilities_baseline", "capabilities_restricted"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/pod-security/build.sh` under a file lock (test binaries running
/// at once build once); the path of `psa-fixtures`.
fn fixture_writer() -> PathBuf {
    let cache = std::env::var_os("TOLLGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tollgate")
        });
    std::fs::create_dir_all(&cache).unwrap();
    let lock = File::create(cache.join("pod-security.lock")).unwrap();
    lock.lock().unwrap();
    let script = repo().join("tests/pod-security/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    drop(lock);
    assert!(
        out.status.success(),
        "{} failed ({}): the PSA fixture generator is needed for this test; it builds with Go \
         1.26 from the Go module proxy.\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().unwrap_or_default())
}

#[derive(serde::Deserialize)]
struct Entry {
    file: String,
    level: String,
    minor: u32,
    check: String,
    expect: String,
}

fn namespace_of(e: &Entry) -> String {
    format!("psa-{}-v1-{}", e.level, e.minor)
}

#[test]
fn every_psa_fixture_gets_psa_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures");
    let writer = fixture_writer();
    let status = Command::new(&writer).arg(&fixtures).status().unwrap();
    assert!(status.success(), "{} failed: {status}", writer.display());
    let index: Vec<Entry> =
        serde_json::from_slice(&std::fs::read(fixtures.join("index.json")).unwrap()).unwrap();

    let mut items = Vec::new();
    let mut namespaces = BTreeMap::new();
    for e in &index {
        let mut pod: Value =
            serde_json::from_slice(&std::fs::read(fixtures.join(&e.file)).unwrap()).unwrap();
        pod["metadata"]["namespace"] = json!(namespace_of(e));
        namespaces.insert(namespace_of(e), (e.level.clone(), e.minor));
        items.push(pod);
    }
    for (name, (level, minor)) in &namespaces {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/enforce-version": format!("v1.{minor}"),
            }},
        }));
    }
    let list = dir.path().join("pods.json");
    std::fs::write(&list, json!({"kind": "List", "items": items}).to_string()).unwrap();
    // The pod_security set alone, judging by the namespaces' labels only.
    let policies = repo().join("policies");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "policies:\n  dirs: [{:?}, {:?}]\nmutate:\n  enabled: false\n\
             teams:\n  defaults:\n    podSecurity: {{enforce: privileged, audit: privileged}}\n",
            policies.join("pod_security"),
            policies.join("lib"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["review", "--format", "json", "-c"])
        .arg(&config)
        .arg("-f")
        .arg(&list)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tollgate review ({}): {e}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let verdicts: BTreeMap<(String, String), (bool, Vec<String>)> = report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .map(|o| {
            let denials = o["denials"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            (
                (
                    o["namespace"].as_str().unwrap().to_owned(),
                    o["name"].as_str().unwrap().to_owned(),
                ),
                (o["allowed"].as_bool().unwrap(), denials),
            )
        })
        .collect();

    let policy_of: BTreeMap<&str, &str> = POLICY_OF_CHECK.iter().copied().collect();
    let mut wrong = Vec::new();
    let mut checks = std::collections::BTreeSet::new();
    for (e, pod) in index.iter().zip(&items) {
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        let Some((allowed, denials)) = verdicts.get(&(namespace_of(e), name.clone())) else {
            wrong.push(format!("{}: no verdict", e.file));
            continue;
        };
        let expect_allowed = e.expect == "pass";
        if *allowed != expect_allowed {
            wrong.push(format!(
                "{}: PSA {}, Tollgate {}: {denials:?}",
                e.file,
                e.expect,
                if *allowed { "allowed" } else { "denied" }
            ));
            continue;
        }
        if !expect_allowed {
            checks.insert(e.check.as_str());
            let policy = policy_of.get(e.check.as_str()).unwrap_or_else(|| {
                panic!(
                    "PSA check {} has no Tollgate policy in POLICY_OF_CHECK",
                    e.check
                )
            });
            let overriding = OVERRIDDEN_UNDER_RESTRICTED
                .iter()
                .filter(|(check, _)| e.level == "restricted" && *check == e.check)
                .map(|(_, policy)| *policy);
            let level = format!("violates PodSecurity \"{}:v1.{}\"", e.level, e.minor);
            let by = |p: &str| {
                denials
                    .iter()
                    .any(|d| d.starts_with(&format!("[{p}] {level}")))
            };
            if !(by(policy) || overriding.into_iter().any(by)) {
                wrong.push(format!(
                    "{}: denied, but not by [{policy}] at {level}: {denials:?}",
                    e.file
                ));
            }
        }
    }
    let total = index.len();
    eprintln!(
        "PSA parity: {}/{total} fixtures ({} pass, {} fail, {} checks, {} level-versions) agree",
        total - wrong.len(),
        index.iter().filter(|e| e.expect == "pass").count(),
        index.iter().filter(|e| e.expect == "fail").count(),
        checks.len(),
        namespaces.len(),
    );
    assert!(
        wrong.is_empty(),
        "{} of {total} PSA fixtures disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(
        checks.len(),
        POLICY_OF_CHECK.len(),
        "checks seen: {checks:?}"
    );
}
