//! `vigil generate-assets --out DIR` (hidden): the man pages and shell completions of the Debian
//! package, generated from the command-line definitions so they never drift from `--help`.
//! `cargo xtask package` runs it on the binary it packages.
//!
//! Writes `DIR/man/vigil.1` and one page per subcommand (`vigil-policy-check.1`, ...), and
//! `DIR/completions/{vigil.bash,_vigil,vigil.fish}`. Hidden commands (this one) appear in none.

use super::{Cli, CliError};
use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

pub fn generate(out: &Path) -> Result<(), CliError> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    // The bash generator lists hidden subcommands too: complete a copy of the root without them.
    let full = Cli::command();
    let mut visible = clap::Command::new("vigil")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut visible, "vigil", &completions)
            .with_context(|| format!("cannot write the {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_cover_the_visible_commands_only() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let read = |rel: &str| std::fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let main = read("man/vigil.1");
        assert!(main.contains("vigil\\-policy(1)") || main.contains("vigil-policy(1)"), "the main page lists the subcommands:\n{main}");
        assert!(read("man/vigil-policy-check.1").contains("plugin\\-dir"), "a subcommand page documents its options");
        assert!(read("completions/vigil.bash").contains("policy"));
        assert!(read("completions/_vigil").starts_with("#compdef vigil"));
        assert!(read("completions/vigil.fish").contains("complete -c vigil"));
        for rel in ["man/vigil.1", "completions/vigil.bash", "completions/_vigil", "completions/vigil.fish"] {
            assert!(!read(rel).contains("generate-assets"), "{rel} shows the hidden command");
        }
        assert!(!dir.path().join("man/vigil-generate-assets.1").exists());
    }
}
