//! The `skep` binary: the command-line interface and, as `skep daemon`, the node daemon.
//! Everything lives in the library; see [`skep::cli`].

/// jemalloc rather than glibc's malloc: a manager with 1,000 nodes and 10,000 tasks peaked at
/// 231-248 MiB instead of 317-319 MiB (glibc's per-thread arenas kept freed memory), no slower
/// (`docs/performance.md`). `skep-init`, the exec tasks' helper, keeps the system allocator.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // The exec runtime's init is the `skep-init` binary; `skep init-helper` still runs the
    // same code, for helpers an older skep started (they re-execute this path). It must run
    // before anything starts a thread (tokio, tracing), and it takes its arguments untouched,
    // so it is dispatched here rather than as a clap subcommand.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(skep_init::HELPER_ARG) {
        return skep_init::main(&args);
    }
    skep::cli::main()
}
