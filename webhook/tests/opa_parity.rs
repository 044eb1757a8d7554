//! `tollgate test` gives the same pass/fail per test as `opa test`, the
//! reference implementation of Rego, built from its Go module by
//! `tests/opa/build.sh` (the release pinned in tests/opa/go.mod). OPA is the
//! oracle here, never a dependency of the product.
//!
//! - `tests/fixtures/gatekeeper-repo/`: a Gatekeeper policy repository
//!   (Rego v0 `src.rego` + `src_test.rego` per template) reproducing each
//!   failure class of issue #18; every test passes in both, with
//!   `--v0-compatible`. Its Suites pass `tollgate verify`.
//! - `tests/fixtures/opa-parity/`: v0 tests that fail in OPA too, so the
//!   parity holds on failures as well as passes.
//! - `policies/`: the bundled library (v1), with plain `opa test` and with
//!   `--v0-compatible`. (This test found `gpu_quota` reading its config
//!   with `object.get(data, …)`, which OPA refuses as recursion and regorus
//!   accepts; it now reads the path.)

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/opa/build.sh` under a file lock (test binaries running at once
/// build once); the path of `opa`.
fn opa() -> PathBuf {
    let cache = std::env::var_os("TOLLGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tollgate")
        });
    std::fs::create_dir_all(&cache).unwrap();
    let lock = File::create(cache.join("opa.lock")).unwrap();
    lock.lock().unwrap();
    let script = repo().join("tests/opa/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    drop(lock);
    assert!(
        out.status.success(),
        "{} failed ({}): opa is this test's oracle; it builds with Go 1.26 from the Go module \
         proxy.\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().unwrap_or_default())
}

/// Every `.rego` file under `dir`, sorted, but those whose name starts
/// with one of `except`.
fn rego_files(dir: &Path, except: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".rego") && !except.iter().any(|e| name.starts_with(e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `data.<package>.<test>` → whether it passed, from `opa test --format json`.
fn opa_verdicts(opa: &Path, flags: &[&str], files: &[PathBuf]) -> BTreeMap<String, bool> {
    let out = Command::new(opa)
        .arg("test")
        .args(flags)
        .args(["--format", "json"])
        .args(files)
        .output()
        .unwrap();
    let results: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "opa test {flags:?}: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = format!(
                "{}.{}",
                r["package"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            );
            let passed =
                r.get("fail").is_none() && r.get("error").is_none() && r.get("skip").is_none();
            (name, passed)
        })
        .collect()
}

/// The same, from `tollgate test --format json`.
fn tollgate_verdicts(flags: &[&str], files: &[PathBuf]) -> BTreeMap<String, bool> {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("test")
        .args(flags)
        .args(["--format", "json"])
        .args(files)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tollgate test {flags:?}: {e}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = format!(
                "{}.{}",
                r["group"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            );
            (name, r["status"] == "pass")
        })
        .collect()
}

fn assert_same(what: &str, opa: &BTreeMap<String, bool>, tollgate: &BTreeMap<String, bool>) {
    assert!(!opa.is_empty(), "{what}: opa ran no tests");
    let differ: Vec<String> = opa
        .keys()
        .chain(tollgate.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| opa.get(*k) != tollgate.get(*k))
        .map(|k| format!("{k}: opa {:?}, tollgate {:?}", opa.get(k), tollgate.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: tollgate test and opa test differ on {} of {} tests:\n{}",
        differ.len(),
        opa.len(),
        differ.join("\n")
    );
}

#[test]
fn the_gatekeeper_repository_fixture_passes_in_tollgate_as_in_opa() {
    let opa = opa();
    let dir = repo().join("tests/fixtures/gatekeeper-repo");
    let files = rego_files(&dir, &[]);
    let theirs = opa_verdicts(&opa, &["--v0-compatible"], &files);
    let ours = tollgate_verdicts(&["--v0-compatible"], std::slice::from_ref(&dir));
    assert_same("gatekeeper-repo", &theirs, &ours);
    assert!(
        ours.values().all(|&passed| passed),
        "every test of the fixture passes: {ours:?}"
    );
}

#[test]
fn failing_tests_fail_in_tollgate_as_in_opa() {
    let opa = opa();
    let files = rego_files(&repo().join("tests/fixtures/opa-parity"), &[]);
    let theirs = opa_verdicts(&opa, &["--v0-compatible"], &files);
    let ours = tollgate_verdicts(&["--v0-compatible"], &files);
    assert_same("opa-parity", &theirs, &ours);
    assert!(
        theirs.values().filter(|&&passed| !passed).count() >= 4,
        "the fixture holds failing tests: {theirs:?}"
    );
}

#[test]
fn the_bundled_policies_pass_in_tollgate_as_in_opa() {
    let opa = opa();
    let policies = repo().join("policies");
    let files = rego_files(&policies, &[]);
    for flags in [&[][..], &["--v0-compatible"][..]] {
        let theirs = opa_verdicts(&opa, flags, &files);
        let ours = tollgate_verdicts(flags, &files);
        assert_same(&format!("policies/ {flags:?}"), &theirs, &ours);
    }
}
