//! The `skep` binary: the command-line interface and, as `skep daemon`, the node daemon.
//! Everything lives in the library; see [`skep::cli`].

fn main() -> std::process::ExitCode {
    // The exec runtime's init helper re-executes this binary. It must run before anything
    // starts a thread (tokio, tracing), and it takes its arguments untouched, so it is
    // dispatched here rather than as a clap subcommand.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("init-helper") {
        return skep::agent::executor::exec::init_helper_main(args[2..].to_vec());
    }
    skep::cli::main()
}
