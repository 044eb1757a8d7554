//! The policy authors' (and operators') commands of the `tollgate` binary. Each returns the
//! process exit code; `main.rs` only parses arguments.

pub mod audit;
pub mod certs;
pub mod report;
pub mod review;
pub mod test;
pub mod verify;

/// Exit codes shared by the authoring commands.
pub mod exit {
    /// Everything passed.
    pub const OK: u8 = 0;
    /// A test failed or errored, or coverage was below the threshold.
    pub const FAILED: u8 = 1;
    /// Nothing could be run: unreadable files, a policy that does not compile.
    pub const BROKEN: u8 = 2;
}

/// `--run REGEX`, compiled; a bad pattern is reported for `command` and
/// answered with the exit code.
pub fn run_filter(run: Option<&str>, command: &str) -> Result<Option<regex::Regex>, u8> {
    run.map(regex::Regex::new).transpose().map_err(|e| {
        eprintln!("tollgate {command}: --run: {e}");
        exit::BROKEN
    })
}
