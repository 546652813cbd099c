//! `haoscar demo` (being written).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}
pub fn run(_args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
