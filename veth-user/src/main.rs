//! `vethfp`: the command-line front end (and, with `CNI_COMMAND` set, the CNI plugin). Thin:
//! parse, call the library's registry, print. See `cli/` (one file per command).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
