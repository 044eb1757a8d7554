//! Free loopback ports.
//!
//! A port is found by binding port 0 and releasing it, so that the process
//! started next can bind it. Between the two, another test of the same
//! binary (they run in parallel) could be handed the same port by the
//! kernel, which picks port 0's port at random: two children would then
//! race for it, and one would exit with "address already in use" (a Jaeger
//! of `tracing_proxy` did, once in CI). So this process never hands out a
//! port twice: it remembers every port it gave and asks again on a repeat.
//! Other processes can still take a port in between; nothing here binds
//! port 0 for long enough to make that likely.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use anyhow::Context as _;

/// Every port this process has handed out.
fn given() -> &'static Mutex<HashSet<u16>> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    GIVEN.get_or_init(Default::default)
}

/// A TCP port on 127.0.0.1 that nothing listens on right now, and that
/// this process has not handed out before.
pub fn free_port() -> anyhow::Result<u16> {
    let [port] = free_ports()?;
    Ok(port)
}

/// `n` distinct free ports, none handed out before by this process.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut given = given().lock().unwrap_or_else(|e| e.into_inner());
    // Held open together until all are chosen, so they differ from each
    // other; a port given before is kept bound too, so the kernel moves on.
    let mut held = Vec::new();
    let mut ports = [0; N];
    let mut found = 0;
    while found < N {
        anyhow::ensure!(
            held.len() < N + 1000,
            "no fresh loopback port after {} tries ({} given already)",
            held.len(),
            given.len()
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        if given.insert(port) {
            ports[found] = port;
            found += 1;
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the memory of given ports, 2,000 ports taken one by one
    /// repeat (the kernel picks at random among ~14,000): the race above.
    #[test]
    fn a_port_is_never_handed_out_twice() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        let many: [u16; 50] = free_ports().unwrap();
        assert!(many.iter().all(|p| seen.insert(*p)));
    }
}
