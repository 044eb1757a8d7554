//! Finding the binaries the tests run, building them when missing.
//!
//! Both builds run under a file lock, so test binaries running in parallel
//! build once: the first takes the lock and builds, the others wait and then
//! find the result.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;

/// The control-plane binaries the harness needs in one directory.
const CONTROL_PLANE_BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kubectl",
];

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace
/// root when relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs `f` holding an exclusive lock on `lock_path` (created if needed).
fn with_lock<T>(lock_path: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if let Some(parent) = lock_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let lock = File::create(lock_path)
        .with_context(|| format!("creating lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let result = f();
    drop(lock); // closing the file releases the lock
    result
}

/// The cache directory `tests/control-plane/build.sh` uses:
/// `${TOLLGATE_CACHE:-~/.cache/tollgate}/control-plane`.
fn control_plane_cache() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("TOLLGATE_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Path::new(&home).join(".cache/tollgate")
        }
    };
    Ok(base.join("control-plane"))
}

fn has_control_plane(dir: &Path) -> bool {
    CONTROL_PLANE_BINARIES
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory holding `etcd`, `kube-apiserver`,
/// `kube-controller-manager` and `kubectl`.
///
/// `$TOLLGATE_CONTROL_PLANE_BIN` wins when set. Otherwise the binaries are
/// taken from the build cache, and built with `tests/control-plane/build.sh`
/// (about 10 minutes on 2 cores, once per machine and Kubernetes release) when missing.
pub fn control_plane_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TOLLGATE_CONTROL_PLANE_BIN") {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            has_control_plane(&dir),
            "TOLLGATE_CONTROL_PLANE_BIN={} lacks one of {CONTROL_PLANE_BINARIES:?}",
            dir.display()
        );
        return Ok(dir);
    }
    // build.sh answers at once when its cache is current, and rebuilds
    // when the cached binaries come from an older recipe (go.mod, go.sum or the script changed):
    // asking it every time keeps tests off stale binaries.
    let cache = control_plane_cache()?;
    with_lock(&cache.join("build.lock"), run_build_script)
}

fn run_build_script() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("tests/control-plane/build.sh");
    eprintln!(
        "tollgate-e2e: {} (a no-op when cached; else about 10 minutes)",
        script.display()
    );
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}); its stdout:\n{stdout}",
        script.display(),
        output.status
    );
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("{} printed no bin directory", script.display()))?;
    anyhow::ensure!(
        has_control_plane(&dir),
        "{} printed {} but it lacks one of {CONTROL_PLANE_BINARIES:?}",
        script.display(),
        dir.display()
    );
    Ok(dir)
}

/// The Jaeger v2 all-in-one binary: `$TOLLGATE_JAEGER_BIN` when set, else
/// from the cache `tests/jaeger/build.sh` fills (built from Jaeger's Go
/// module, a few minutes on 2 cores, once per machine and release).
pub fn jaeger_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOLLGATE_JAEGER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cache = control_plane_cache()?.with_file_name("jaeger");
    with_lock(&cache.join("build.lock"), || {
        let script = workspace_root().join("tests/jaeger/build.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "{} failed ({}); its stdout:\n{stdout}",
            script.display(),
            output.status
        );
        let bin = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()).join("jaeger"))
            .with_context(|| format!("{} printed no bin directory", script.display()))?;
        anyhow::ensure!(
            is_executable(&bin),
            "{} printed a directory without jaeger",
            script.display()
        );
        Ok(bin)
    })
}

/// Cargo, for a build from inside a test: without the variables cargo set
/// for the test process. Build scripts watch some of them (ring's reruns
/// when `CARGO_MANIFEST_DIR` changes), so passing them on rebuilt ring,
/// rustls and everything above it on every first proxy build of a
/// `cargo test` run, and again at the next `cargo test` (about 40 s each
/// way on these machines).
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if SET_FOR_TESTS.contains(&name)
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            command.env_remove(name);
        }
    }
    command
}

/// What cargo sets for a test process (beyond `CARGO_PKG_*` and
/// `CARGO_BIN_EXE_*`).
const SET_FOR_TESTS: [&str; 6] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// The `tollgate` binary: `$TOLLGATE_BIN` when set, else
/// `<target>/debug/tollgate`, built with
/// `cargo build -p tollgate-webhook --bin tollgate` when missing.
pub fn tollgate_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOLLGATE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let target = target_dir();
    let bin = target.join("debug/tollgate");
    if is_executable(&bin) {
        return Ok(bin);
    }
    with_lock(&target.join("tollgate-e2e-build.lock"), || {
        if is_executable(&bin) {
            return Ok(bin.clone());
        }
        eprintln!("tollgate-e2e: {} missing; building it", bin.display());
        let status = cargo()
            .args(["build", "-p", "tollgate-webhook", "--bin", "tollgate"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .status()
            .context("running cargo build for the tollgate binary")?;
        anyhow::ensure!(
            status.success(),
            "cargo build -p tollgate-webhook --bin tollgate failed ({status})"
        );
        anyhow::ensure!(
            is_executable(&bin),
            "cargo build succeeded but {} does not exist",
            bin.display()
        );
        Ok(bin.clone())
    })
}

/// The `tollgate-proxy` binary: `$TOLLGATE_PROXY_BIN` when set, else
/// `<target>/debug/tollgate-proxy`, built with
/// `cargo build -p tollgate-proxy --bin tollgate-proxy`. Unlike
/// [`tollgate_binary`], cargo is asked once per test process even when the
/// binary exists (a no-op when it is current), so the proxy tests never run
/// a stale proxy after an edit.
pub fn proxy_binary() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    if let Some(bin) = std::env::var_os("TOLLGATE_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    BUILT
        .get_or_init(|| build_proxy().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_proxy() -> anyhow::Result<PathBuf> {
    let target = target_dir();
    let bin = target.join("debug/tollgate-proxy");
    with_lock(&target.join("tollgate-e2e-build.lock"), || {
        let status = cargo()
            .args([
                "build",
                "--quiet",
                "-p",
                "tollgate-proxy",
                "--bin",
                "tollgate-proxy",
            ])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .status()
            .context("running cargo build for the tollgate-proxy binary")?;
        anyhow::ensure!(
            status.success(),
            "cargo build -p tollgate-proxy --bin tollgate-proxy failed ({status})"
        );
        anyhow::ensure!(
            is_executable(&bin),
            "cargo build succeeded but {} does not exist",
            bin.display()
        );
        Ok(bin.clone())
    })
}

#[cfg(test)]
mod tests {
    /// This process runs under `cargo test`, so cargo set
    /// `CARGO_MANIFEST_DIR`; a nested build must not see it.
    #[test]
    fn nested_builds_do_not_inherit_what_cargo_set_for_the_test() {
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let command = super::cargo();
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(removed.iter().any(|k| k == "CARGO_PKG_NAME"), "{removed:?}");
        assert!(
            !removed
                .iter()
                .any(|k| k == "CARGO_TARGET_DIR" || k == "CARGO_HOME")
        );
    }
}
