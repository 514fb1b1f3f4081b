//! The tokio runtime, sized by `--threads`.

/// One thread gets the lighter current-thread scheduler (no work stealing, less memory);
/// more get the multi-threaded one.
pub fn build(threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(usize::from(threads));
        b
    };
    builder
        .enable_all()
        .thread_name("mesh-proxy")
        // DNS lookups for static routes and forward-proxy targets are the only blocking work.
        .max_blocking_threads(4)
        .build()
}
