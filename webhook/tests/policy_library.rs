//! The bundled Rego library's own unit tests (`policies/**/*_test.rego`),
//! run as `opa test` would run them.

use std::path::PathBuf;

use tollgate_webhook::policy::sources_with_tests_from_dirs;
use tollgate_webhook::policy::testing::{self, Status};

#[test]
fn every_bundled_policy_test_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let sources = sources_with_tests_from_dirs(&[dir]).unwrap();
    let results = testing::run(&sources).unwrap();
    let failures: Vec<String> = results
        .iter()
        .filter(|r| r.status != Status::Pass)
        .map(|r| {
            format!(
                "{}:{}: {}.{}: {:?}",
                r.case.file.display(),
                r.case.line,
                r.case.package,
                r.case.name,
                r.status
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failing Rego tests:\n{}",
        failures.join("\n")
    );
    // Every policy has tests beside it, for what it allows and what it denies.
    for source in &sources {
        let name = source.path.file_name().unwrap().to_str().unwrap();
        if name.ends_with("_test.rego") || source.path.parent().unwrap().ends_with("lib") {
            continue;
        }
        let test_file = source
            .path
            .with_file_name(name.replace(".rego", "_test.rego"));
        let count = results.iter().filter(|r| r.case.file == test_file).count();
        assert!(
            count >= 2,
            "{} has {count} tests; every policy needs tests of what it allows and denies",
            source.path.display()
        );
    }
    eprintln!("{} Rego tests passed", results.len());
}
