//! `atp migrate`: apply the database migrations.

use super::DbArgs;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    db: DbArgs,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let pool = atp_store::connect(&args.db.database_url, 2).await?;
    atp_store::migrate(&pool).await?;
    println!("migrations applied");
    Ok(())
}
