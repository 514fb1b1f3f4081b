//! A bench server (the echo app, the trace sink) on a thread and single-threaded runtime of its
//! own, so that serving never competes with the load generator's scheduler.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Listens on 127.0.0.1 (a free port) and runs `serve` as a task for every accepted
/// connection; returns the address. The thread, named `name`, lives as long as the process.
pub fn spawn<F, Fut>(name: &str, serve: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let label = name.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("{label} runtime: {e}"),
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("{label} listener: {e}"),
                };
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(serve(tcp));
                }
            });
        })?;
    Ok(addr)
}
