//! `skep-init`: the exec runtime's init, run by the agent from the directory of its own binary
//! (see the `skep-init` crate in `init/`). It uses nothing of skep's library, so the binary
//! holds std, nix and the init's own code only.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    skep_init::main(&args)
}
