//! With `RUST_BACKTRACE=1` in the environment, the errors regorus builds
//! while it evaluates would each capture a backtrace (3.5 % of a served
//! review's CPU samples); `tollgate` turns library backtraces off at start unless
//! `RUST_LIB_BACKTRACE` asks for them. One test in its own binary: the
//! environment is the process's, and std reads it once.

use std::backtrace::{Backtrace, BacktraceStatus};

#[test]
fn library_errors_capture_no_backtrace_under_rust_backtrace() {
    // SAFETY: the only test of this binary, before anything reads the
    // environment.
    unsafe {
        std::env::set_var("RUST_BACKTRACE", "1");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    tollgate_webhook::policy::quiet_library_backtraces();
    assert_eq!(Backtrace::capture().status(), BacktraceStatus::Disabled);
    assert_eq!(
        std::env::var("RUST_BACKTRACE").as_deref(),
        Ok("1"),
        "panics keep their backtraces"
    );
}
