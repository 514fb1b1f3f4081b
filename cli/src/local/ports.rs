//! Free loopback ports for the local mesh. Every sidecar on one machine needs its own outbound,
//! inbound and admin ports (the contract's 15001/15003/15000 are per pod, and here every
//! workload shares the host's network), so they are picked by asking the kernel for a free one.

use std::net::{Ipv4Addr, TcpListener};

/// A port that was free a moment ago. Another process may take it before the sidecar binds it;
/// the sidecar then fails to start with a clear bind error, which beats a fixed port that is
/// certain to collide with the next workload.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_a_bindable_port() {
        let port = free_port().expect("a free port");
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
    }
}
