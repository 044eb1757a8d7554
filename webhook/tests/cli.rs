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
        "tollgate: $DIR/config.yaml: limits.maxBodyByte: unknown field `maxBodyByte`, expected one of `maxBodyBytes`, `maxConcurrentRequests`, `requestTimeoutMs` at line 2 column 3\n"
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
