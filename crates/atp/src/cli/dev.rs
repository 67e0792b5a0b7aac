//! `atp dev`: the whole stack in the foreground.

use std::net::SocketAddr;

#[derive(clap::Args)]
pub(super) struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    crate::dev::run(&root, args.listen).await
}
