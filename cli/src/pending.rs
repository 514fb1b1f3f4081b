//! Placeholders for `mesh run`, `mesh demo` and `mesh collector` until their modules are wired in
//! (see the top of main.rs for the signatures they plug into). Each accepts any arguments so that
//! the command tree and completions already show them.

use crate::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub async fn run(command: &str, _args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("`mesh {command}` is not available yet in this build")
}
