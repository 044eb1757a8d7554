//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::Context as _;

/// A TCP port on 127.0.0.1 that nothing listens on right now.
///
/// The port is found by binding port 0 and releasing it, so another process
/// could take it in between; in practice the kernel does not hand the same
/// ephemeral port out again soon.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `n` distinct free ports (held open together while they are chosen, so
/// they differ from each other).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0 to find free ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}
