//! The `skep` binary: the command-line interface and, as `skep daemon`, the node daemon.
//! Everything lives in the library; see [`skep::cli`].

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
