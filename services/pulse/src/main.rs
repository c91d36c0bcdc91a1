//! `pulse`: the one binary. `pulse serve [ROLE…]` runs roles (all by default), `pulse migrate`
//! applies migrations. Configuration comes from `PULSE_*` environment variables.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pulse::Role;
use pulse_shared::{Settings, db, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Multi-step email sequences you can take control of"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more roles (default: all of them in this process).
    Serve {
        #[arg(value_enum)]
        roles: Vec<Role>,
    },
    /// Apply database migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let cli = Cli::parse();
    let settings = Settings::from_env().context("reading configuration")?;
    match cli.command {
        Command::Migrate => {
            db::ensure_database(&settings.database_url)
                .await
                .context("creating the database")?;
            let pool = db::pool(&settings.database_url, 2)?;
            db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Serve { roles } => {
            let shutdown = CancellationToken::new();
            pulse::cancel_on_signal(shutdown.clone());
            let listener = pulse::bind(settings.http_addr).await?;
            pulse::serve(settings, roles, listener, shutdown).await?;
        }
    }
    Ok(())
}
