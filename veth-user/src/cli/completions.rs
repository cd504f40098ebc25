//! `vethfp completions bash|zsh|fish`: the shell completion script, from the same clap
//! definition the parser uses (so it never drifts from the real flags).

use clap::CommandFactory;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Prints the script (a closed stdout ends the command as SIGPIPE would: see `out`).
pub fn print(shell: Shell) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Into a buffer first: clap_complete panics on a write error.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "vethfp", &mut script);
    super::out::bytes(&script);
}
