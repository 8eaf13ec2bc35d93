//! The `skep` binary: the command-line interface and, as `skep daemon`, the node daemon.
//! Everything lives in the library; see [`skep::cli`].

fn main() -> std::process::ExitCode {
    skep::cli::main()
}
