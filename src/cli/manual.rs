//! `skep completion` and `skep man`: the shell completion scripts and the manual pages, made
//! from the same clap definitions that parse the command line, so they cannot drift from it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Debug, Args)]
pub(super) struct CompletionArgs {
    /// The shell: bash, zsh or fish (elvish and powershell work too).
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(super) struct ManArgs {
    /// Write skep.1 and a page per command (skep-service-create.1, ...) into this directory
    /// (created if missing) instead of printing skep.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script of `args.shell` to stdout.
pub(super) fn completion(args: &CompletionArgs) -> anyhow::Result<()> {
    super::print(&completion_script(args.shell)?)
}

fn completion_script(shell: clap_complete::Shell) -> anyhow::Result<String> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "skep", &mut out);
    String::from_utf8(out).context("the completion script is not UTF-8")
}

/// Prints skep.1, or writes every page into `args.dir`.
pub(super) fn man(args: &ManArgs) -> anyhow::Result<()> {
    match &args.dir {
        None => super::print(&page()?),
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory {}", dir.display()))?;
            clap_mangen::generate_to(manual_command(), dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))
        }
    }
}

/// The command line as the manual shows it: NAME reads "skep - a container orchestrator...".
fn manual_command() -> clap::Command {
    Cli::command().about(
        "a container orchestrator with Docker Swarm's workflow and a zero-trust security core",
    )
}

/// skep.1 in roff.
fn page() -> anyhow::Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(manual_command())
        .render(&mut out)
        .context("rendering the manual page")?;
    String::from_utf8(out).context("the manual page is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_know_the_subcommands() {
        let bash = completion_script(clap_complete::Shell::Bash).unwrap();
        for word in [
            "service",
            "swarm",
            "join-token",
            "completion",
            "--log-format",
        ] {
            assert!(bash.contains(word), "bash script lacks {word}");
        }
        assert!(bash.contains("complete -F"), "not a bash completion script");
        let zsh = completion_script(clap_complete::Shell::Zsh).unwrap();
        assert!(zsh.starts_with("#compdef skep"), "{}", &zsh[..40]);
        let fish = completion_script(clap_complete::Shell::Fish).unwrap();
        assert!(fish.contains("complete -c skep"), "not a fish script");
        assert!(fish.contains("service"));
    }

    #[test]
    fn the_manual_page_is_roff_and_names_the_commands() {
        let page = page().unwrap();
        assert!(
            page.starts_with(".ie") || page.contains("\n.TH skep 1"),
            "{page}"
        );
        assert!(page.contains(".TH skep 1"), "no title header");
        assert!(page.contains(".SH NAME"));
        assert!(page.contains("skep\\-service(1)"), "subcommands are listed");
        // Hidden flags (test knobs) stay out of the manual.
        assert!(!page.contains("heartbeat"));
    }

    #[test]
    fn man_dir_has_a_page_per_command() {
        let dir = tempfile::tempdir().unwrap();
        man(&ManArgs {
            dir: Some(dir.path().join("man1")),
        })
        .unwrap();
        let out = dir.path().join("man1");
        for page in [
            "skep.1",
            "skep-service.1",
            "skep-service-create.1",
            "skep-daemon.1",
        ] {
            let text =
                std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH"), "{page}");
        }
        let daemon = std::fs::read_to_string(out.join("skep-daemon.1")).unwrap();
        assert!(daemon.contains("log\\-format"), "{daemon}");
        assert!(!daemon.contains("heartbeat"), "hidden flags stay out");
    }
}
