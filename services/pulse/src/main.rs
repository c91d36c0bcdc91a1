//! `pulse`: the one binary. `pulse serve [ROLE…]` runs roles (all by default), `pulse migrate`
//! applies migrations, and the operator commands (`sequences`, `steps`, `mailboxes`, `suppressions`,
//! `inbound`, `enrollments`, `enroll`, `events`, `re-enroll`, `sends`, `resolve`, `audit`,
//! `resume-preview`, `outbox`) call the API. Services are configured by `PULSE_*`
//! environment variables.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pulse::{
    Role,
    cli::{
        self, Client, EnrollArgs, Enrollments, Events, Inbound, Mailboxes, ReenrollArgs, Request,
        ResolveArgs, SendsFilter, Sequences, Steps, Suppressions,
    },
};
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
    /// List, show, pause, resume or delete sequences.
    Sequences {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Sequences,
    },
    /// Change, add, delete or move one step of a sequence.
    Steps {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Steps,
    },
    /// List, add or delete sender mailboxes.
    Mailboxes {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Mailboxes,
    },
    /// The suppression list: add, list, remove, import a CSV, export.
    Suppressions {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Suppressions,
    },
    /// What came back: replies, bounces, complaints (list, or show one).
    Inbound {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Inbound,
    },
    /// Enroll one lead in a sequence by hand (as a trigger would).
    Enroll {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: EnrollArgs,
    },
    /// Send trigger events from a file.
    Events {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Events,
    },
    /// The dev outbox: what would have been sent when no relay is configured.
    Outbox {
        #[command(flatten)]
        client: Client,
        /// How many, newest first (1 to 1000, default 100).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// List, show or cancel enrollments.
    Enrollments {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Enrollments,
    },
    /// Re-enroll leads in a sequence from step 1.
    ReEnroll {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: ReenrollArgs,
    },
    /// What actually went out: the send ledger.
    Sends {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: SendsFilter,
    },
    /// Settle an UNKNOWN send after checking the relay's logs for its Message-ID.
    Resolve {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: ResolveArgs,
    },
    /// Who did what to a sequence, and when.
    Audit {
        #[command(flatten)]
        client: Client,
        /// The sequence: its id or its exact name.
        sequence: String,
    },
    /// What resuming a paused sequence now would send, and what it would skip.
    ResumePreview {
        #[command(flatten)]
        client: Client,
        /// The sequence: its id or its exact name.
        sequence: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (client, request) = match cli.command {
        Command::Serve { roles } => {
            let telemetry =
                telemetry::init(&pulse::service_name(&roles)).context("setting up telemetry")?;
            let settings = Settings::from_env().context("reading configuration")?;
            let shutdown = CancellationToken::new();
            pulse::cancel_on_signal(shutdown.clone());
            let listeners = pulse::bind(&settings, &roles).await?;
            let served = pulse::serve(settings, roles, listeners, shutdown).await;
            // Spans of the last sends are still buffered: export them before exiting.
            telemetry.shutdown();
            served?;
            return Ok(());
        }
        Command::Migrate => {
            telemetry::init_with_default(telemetry::DEFAULT_FILTER);
            let settings = Settings::from_env().context("reading configuration")?;
            db::ensure_database(&settings.database_url)
                .await
                .context("creating the database")?;
            let pool = db::pool_for(&settings, 2)?;
            db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Sequences { client, action } => (client, Request::Sequences(action)),
        Command::Mailboxes { client, action } => (client, Request::Mailboxes(action)),
        Command::Steps { client, action } => (client, Request::Steps(action)),
        Command::Suppressions { client, action } => (client, Request::Suppressions(action)),
        Command::Inbound { client, action } => (client, Request::Inbound(action)),
        Command::Enrollments { client, action } => (client, Request::Enrollments(action)),
        Command::ReEnroll { client, args } => (client, Request::Reenroll(args)),
        Command::Enroll { client, args } => (client, Request::Enroll(args)),
        Command::Events { client, action } => (client, Request::Events(action)),
        Command::Outbox { client, limit } => (client, Request::Outbox { limit }),
        Command::Sends { client, filter } => (client, Request::Sends(filter)),
        Command::Audit { client, sequence } => (client, Request::Audit { sequence }),
        Command::Resolve { client, args } => (client, Request::Resolve(args)),
        Command::ResumePreview { client, sequence } => {
            (client, Request::ResumePreview { sequence })
        }
    };
    match cli::run(&client, request).await {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            Ok(())
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            std::process::exit(failure.code);
        }
    }
}
