//! `tollgate serve` refuses a bad configuration or a bad policy at start-up,
//! with the cause on stderr and a non-zero exit.

use std::process::Command;

fn serve(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        config.replace("$DIR", &dir.path().display().to_string()),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/broken.rego"),
        "package tollgate.broken\n\nviolation contains {\"msg\": m} if {\n\tm := input.review.kind.kind +\n}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let stderr = stderr.replace(&dir.path().display().to_string(), "$DIR");
    (output.status.success(), stderr)
}

#[test]
fn an_unknown_config_key_stops_start_up_naming_its_path() {
    let (ok, stderr) = serve("limits:\n  maxBodyByte: 1024\n");
    assert!(!ok);
    assert_eq!(
        stderr,
        "tollgate: $DIR/config.yaml: limits.maxBodyByte: unknown field `maxBodyByte`, expected one of `maxBodyBytes`, `maxConcurrentRequests`, `requestTimeoutMs`, `headerReadTimeoutMs` at line 2 column 3\n"
    );
}

#[test]
fn a_policy_that_does_not_compile_stops_start_up_with_file_and_line() {
    let (ok, stderr) = serve("policies:\n  dirs: [\"$DIR/policies\"]\n");
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "tollgate: $DIR/policies/broken.rego:4:7: expecting `}` while parsing set\n"
        ),
        "{stderr}"
    );
}

fn tollgate(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_bundled_library_passes_its_tests_with_coverage_over_90_percent() {
    let (code, stdout, stderr) = tollgate(&["test", "policies", "--coverage", "--threshold", "90"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed, 0 errors\n"), "{stdout}");
    let total = stdout
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .unwrap();
    let percent: f64 = total
        .trim()
        .split('%')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(percent >= 90.0, "{total}");
}

/// A JUnit report as CI tools read it: a `testsuites` root whose counts
/// agree with its `testsuite`s and theirs with their `testcase`s.
#[derive(Debug, Default)]
struct Junit {
    tests: usize,
    failures: usize,
    errors: usize,
    suites: Vec<(String, usize, usize, usize)>,
    cases: Vec<(String, String, Option<String>)>,
}

fn tag(e: &quick_xml::events::BytesStart) -> String {
    e.name().into_inner().to_owned()
}

fn parse_junit(xml: &str) -> Junit {
    use quick_xml::Reader;
    use quick_xml::events::Event;
    let mut reader = Reader::from_str(xml);
    let mut report = Junit::default();
    let attr = |e: &quick_xml::events::BytesStart, name: &str| -> String {
        e.try_get_attribute(name)
            .unwrap()
            .unwrap_or_else(|| panic!("missing attribute {name}"))
            .value
            .to_string()
    };
    let mut depth_names = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) if tag(&e) == "testsuites" => {
                report.tests = attr(&e, "tests").parse().unwrap();
                report.failures = attr(&e, "failures").parse().unwrap();
                report.errors = attr(&e, "errors").parse().unwrap();
                depth_names.push("testsuites");
            }
            Event::Start(e) if tag(&e) == "testsuite" => {
                assert_eq!(depth_names.last(), Some(&"testsuites"));
                report.suites.push((
                    attr(&e, "name"),
                    attr(&e, "tests").parse().unwrap(),
                    attr(&e, "failures").parse().unwrap(),
                    attr(&e, "errors").parse().unwrap(),
                ));
                depth_names.push("testsuite");
            }
            Event::Start(e) | Event::Empty(e) if tag(&e) == "testcase" => {
                assert_eq!(depth_names.last(), Some(&"testsuite"));
                attr(&e, "time").parse::<f64>().unwrap();
                report
                    .cases
                    .push((attr(&e, "classname"), attr(&e, "name"), None));
            }
            Event::Start(e) | Event::Empty(e)
                if matches!(tag(&e).as_str(), "failure" | "error") =>
            {
                let kind = tag(&e);
                report.cases.last_mut().unwrap().2 = Some(kind);
            }
            Event::End(e) if matches!(e.name().into_inner(), "testsuite" | "testsuites") => {
                depth_names.pop();
            }
            _ => {}
        }
    }
    let sum =
        |f: fn(&(String, usize, usize, usize)) -> usize| report.suites.iter().map(f).sum::<usize>();
    assert_eq!(report.tests, sum(|s| s.1));
    assert_eq!(report.failures, sum(|s| s.2));
    assert_eq!(report.errors, sum(|s| s.3));
    assert_eq!(report.tests, report.cases.len());
    report
}

#[test]
fn junit_output_has_the_shape_ci_tools_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p_test.rego"),
        "package p_test\n\ntest_passes if true\n\ntest_fails if false\n\ntest_errors if 1 / 0\n\nnot_a_test := 1\n",
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let (code, stdout, _) = tollgate(&["test", &path, "--format", "junit"]);
    assert_eq!(code, 1, "a failing test fails the run");
    let report = parse_junit(&stdout);
    assert_eq!((report.tests, report.failures, report.errors), (3, 1, 1));
    assert_eq!(
        report.cases,
        vec![
            ("data.p_test".into(), "test_passes".into(), None),
            (
                "data.p_test".into(),
                "test_fails".into(),
                Some("failure".into())
            ),
            (
                "data.p_test".into(),
                "test_errors".into(),
                Some("error".into())
            ),
        ]
    );

    let (code, stdout, _) = tollgate(&["test", &path, "--format", "json", "--run", "passes$"]);
    assert_eq!(code, 0, "only the selected test runs");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["summary"],
        serde_json::json!({"total": 1, "passed": 1, "failed": 0, "errors": 0})
    );
}

#[test]
fn coverage_below_the_threshold_fails_the_run() {
    let (code, _, stderr) = tollgate(&[
        "test",
        "policies",
        "--run",
        "privileged_test",
        "--threshold",
        "90",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("tollgate test: coverage ")
            && stderr.contains("is below the threshold of 90%"),
        "{stderr}"
    );
}

#[test]
fn the_bundled_library_passes_under_junit_too() {
    let (code, stdout, _) = tollgate(&["test", "policies", "--format", "junit"]);
    assert_eq!(code, 0);
    let report = parse_junit(&stdout);
    assert!(report.tests >= 30);
    assert_eq!((report.failures, report.errors), (0, 0));
}

#[test]
fn verify_runs_the_gatekeeper_suites_unchanged() {
    let (code, stdout, stderr) =
        tollgate(&["verify", "tests/fixtures/gatekeeper", "--format", "junit"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report = parse_junit(&stdout);
    assert_eq!((report.failures, report.errors), (0, 0));
    assert!(report.tests >= 16, "{stdout}");
    for suite in [
        "requiredlabels",
        "allowedrepos",
        "containerlimits",
        "privileged",
        "hostnamespaces",
        "uniqueingresshost",
        "immutableteam",
    ] {
        let path = format!("tests/fixtures/gatekeeper/{suite}/suite.yaml");
        assert!(
            report.suites.iter().any(|s| s.0 == path),
            "no cases from {path}"
        );
    }
}

#[test]
fn verify_fails_on_a_broken_assertion_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gatekeeper/privileged"
    ));
    for file in ["template.yaml", "constraint.yaml", "disallowed.yaml"] {
        std::fs::copy(fixtures.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("suite.yaml"),
        "kind: Suite\napiVersion: test.gatekeeper.sh/v1alpha1\ntests:\n- name: t\n  template: template.yaml\n  constraint: constraint.yaml\n  cases:\n  - name: c\n    object: disallowed.yaml\n    assertions:\n    - violations: no\n",
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let (code, stdout, _) = tollgate(&["verify", &path]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("    assertion 1: expected no violation(s), got 1; violations: [\"Privileged container is not allowed: shell, securityContext: {\\\"privileged\\\": true}\"]\n"),
        "{stdout}"
    );
}

#[test]
fn review_mutates_then_judges_a_multi_document_manifest_sorted_and_fails_on_a_denial() {
    let (code, stdout, stderr) = tollgate(&[
        "review",
        "-f",
        "tests/fixtures/review/manifests.yaml",
        "--config",
        "tests/fixtures/review/config.yaml",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stdout,
        r#"Deployment app-ml-team/trainer: allowed
  mutate  add /spec/template/spec/containers/0/resources/requests = {"cpu":"2","memory":"4Gi"}
  mutate  add /spec/template/spec/containers/0/securityContext = {"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}
  mutate  add /spec/template/spec/securityContext = {"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}}
  warn    [image_tag] container "trainer" image "registry.example.com/ml/trainer:latest" uses the mutable tag "latest"; pin a version or a digest
Namespace app-ml-team: allowed
  mutations: none
Pod app-ml-team/debug: denied
  mutate  add /spec/containers/0/resources = {"limits":{"cpu":"1","memory":"1Gi"},"requests":{"cpu":"100m","memory":"128Mi"}}
  mutate  add /spec/containers/0/securityContext/capabilities = {"drop":["ALL"]}
  mutate  add /spec/securityContext = {"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}}
  deny    [host_namespaces] violates PodSecurity "baseline:latest": host namespaces (hostPID=true)
  deny    [privileged] violates PodSecurity "baseline:latest": privileged (container "shell" must not set securityContext.privileged=true)
Service app-ml-team/trainer: denied
  mutations: none
  deny    [service_type] Service "trainer" of type NodePort is not allowed in team namespace "app-ml-team"; use a ClusterIP Service behind the ingress
4 objects: 2 allowed, 2 denied, 1 with warnings
"#
    );
}

#[test]
fn review_passes_clean_manifests_from_stdin() {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["review", "-f", "-", "--format", "json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gatekeeper/privileged/allowed.yaml"
    ))
    .unwrap()
    .replace("registry.example.com/nginx:1.27", "registry.k8s.io/nginx:1.27")
    .replace("securityContext: {privileged: false}", "securityContext: {privileged: false}\n      resources: {limits: {cpu: 100m, memory: 64Mi}}")
    .replace("namespace: app-ml-team", "namespace: app-ml-team\n  labels: {team: ml}");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{json}");
    assert_eq!(json["objects"][0]["allowed"], true, "{json}");
    assert_eq!(json["objects"][0]["denials"], serde_json::json!([]));
}

#[test]
fn certs_issue_writes_a_workload_identity_that_inspect_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("id");
    let out_arg = out.display().to_string();
    let id = "spiffe://cluster.local/ns/flyte/sa/flyteadmin";
    let (code, stdout, stderr) = tollgate(&["certs", "issue", "--out", &out_arg, "--spiffe", id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("URIs:       {id}")), "{stdout}");
    let cert = out.join("tls.crt").display().to_string();
    let ca = out.join("ca.crt").display().to_string();
    let (code, stdout, _) = tollgate(&["certs", "inspect", &cert, "--ca", &ca]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("chains to the given CA: yes"), "{stdout}");
    assert!(stdout.contains("key:        ECDSA P-256"), "{stdout}");
}

#[test]
fn certs_inspect_fails_on_another_ca_and_on_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    for name in ["a", "b"] {
        let (code, _, stderr) = tollgate(&["certs", "issue", "--out", &path(name), "--dns", "x"]);
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, stdout, _) = tollgate(&[
        "certs",
        "inspect",
        &path("a/tls.crt"),
        "--ca",
        &path("b/ca.crt"),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("PROBLEM: does not chain to the given CA"),
        "{stdout}"
    );

    std::fs::write(path("junk.pem"), "not a certificate").unwrap();
    let (code, _, stderr) = tollgate(&["certs", "inspect", &path("junk.pem")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("contains no certificate"), "{stderr}");
}

// Issue 18: a Gatekeeper policy repository, unchanged.

#[test]
fn verify_passes_the_gatekeeper_repository_fixture_unchanged() {
    let (code, stdout, stderr) = tollgate(&["verify", "tests/fixtures/gatekeeper-repo"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("9 tests: 9 passed, 0 failed, 0 errors\n"),
        "{stdout}"
    );
}

#[test]
fn v0_unit_tests_need_v0_compatible_and_say_so() {
    let (code, stdout, stderr) = tollgate(&["test", "tests/fixtures/gatekeeper-repo"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("`if` keyword is required before rule body")
            && stderr.contains("if it is Rego v0, run with --v0-compatible"),
        "{stderr}"
    );
    let (code, stdout, stderr) = tollgate(&[
        "test",
        "--v0-compatible",
        "--verbose",
        "tests/fixtures/gatekeeper-repo",
        "policies/image_tag.rego",
        "policies/image_tag_test.rego",
        "policies/lib",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("library/k8srequiredowner/src.rego: Rego v0 (--v0-compatible")
            && stderr.contains("line 9: a further body of the rule on line 5")
            && stderr.contains("policies/image_tag.rego: Rego v1 (imports rego.v1)"),
        "{stderr}"
    );
}

#[test]
fn fail_on_empty_timeout_explain_bench_and_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t_test.rego");
    std::fs::write(
        &path,
        "package t\n\ntest_ok { true }\n\ntest_slow { count([x | x := numbers.range(1, 3000)[_]; y := numbers.range(1, 3000)[_]]) > 0 }\n\ntest_fails {\n  x := 1\n  print(\"x is\", x)\n  x == 2\n}\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let (code, _, stderr) = tollgate(&[
        "test",
        "--v0-compatible",
        "--fail-on-empty",
        "--run",
        "nothing",
        &file,
    ]);
    assert_eq!(
        (code, stderr.trim()),
        (1, "tollgate test: no test_* rules found")
    );
    let (code, _, _) = tollgate(&["test", "--v0-compatible", "--run", "nothing", &file]);
    assert_eq!(code, 0);

    let (code, stdout, _) = tollgate(&[
        "test",
        "--v0-compatible",
        "--timeout",
        "200ms",
        "--explain",
        "fails",
        &file,
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("ERROR") && stdout.contains("execution exceeded time limit"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("the test stopped at {file}:10: x == 2"))
            && stdout.contains("print: ")
            && stdout.contains("x is 1"),
        "{stdout}"
    );
    let verdicts = |parallel: &str| {
        let (_, stdout, _) = tollgate(&[
            "test",
            "--v0-compatible",
            "--timeout",
            "200ms",
            "--parallel",
            parallel,
            "--format",
            "json",
            &file,
        ]);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].to_string(), r["status"].to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(verdicts("1"), verdicts("3"));

    let (code, stdout, _) = tollgate(&[
        "test",
        "--v0-compatible",
        "--bench",
        "--run",
        "test_ok",
        &file,
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains(" ns/op ("), "{stdout}");
}

#[test]
fn a_cel_only_template_is_reported_by_name_in_verify() {
    let (code, stdout, _) = tollgate(&["verify", "tests/fixtures/gatekeeper-cel-only"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(
            "ConstraintTemplate k8snoprivilegedcel: CEL-only templates are not supported yet"
        ),
        "{stdout}"
    );
}

#[test]
fn review_matches_a_manifest_without_a_namespace_as_gatekeeper_does() {
    let dir = tempfile::tempdir().unwrap();
    let library = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gatekeeper-repo/library/k8snolatesttag"
    ));
    std::fs::copy(
        library.join("template.yaml"),
        dir.path().join("template.yaml"),
    )
    .unwrap();
    std::fs::copy(
        library.join("samples/constraint.yaml"),
        dir.path().join("constraint.yaml"),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "policies:\n  dirs: [{:?}]\nmutate:\n  enabled: false\n",
            dir.path()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let manifest = library.join("samples/pod-latest-no-namespace.yaml");
    let (code, stdout, stderr) = tollgate(&[
        "review",
        "-c",
        &config,
        "-f",
        &manifest.display().to_string(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("[no-latest-in-default] container web uses the latest tag"),
        "{stdout}"
    );
    let other = library.join("samples/pod-latest-other-namespace.yaml");
    let (code, stdout, _) =
        tollgate(&["review", "-c", &config, "-f", &other.display().to_string()]);
    assert_eq!(code, 0, "{stdout}");
}
