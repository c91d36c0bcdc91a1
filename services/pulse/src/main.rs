//! `pulse`: the one binary. `pulse serve [ROLE…]` runs roles (all by default), `pulse migrate`
//! applies migrations, and the operator commands (`sequences`, `enrollments`, `re-enroll`,
//! `sends`, `audit`, `resume-preview`) call the API. Services are configured by `PULSE_*`
//! environment variables.

use anyhow::Context;
use clap::{Parser, Subcommand};
use pulse::{
    Role,
    cli::{self, Client, Enrollments, Request, Sequences},
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
    /// List enrollments or cancel one.
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
        sequence: String,
        /// A lead's email (repeatable).
        #[arg(long = "lead")]
        leads: Vec<String>,
        /// Everyone who is not currently active in the sequence.
        #[arg(long)]
        all_not_active: bool,
    },
    /// What actually went out: the send ledger.
    Sends {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        sequence: Option<String>,
        #[arg(long)]
        lead: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Settle an UNKNOWN send after checking the relay's logs for its Message-ID.
    Resolve {
        #[command(flatten)]
        client: Client,
        /// Idempotency key of the send (see `pulse sends --state UNKNOWN --json`).
        key: String,
        /// It went out: record it SENT and move the enrollment on.
        #[arg(long)]
        sent: bool,
        /// It did not go out: send it again.
        #[arg(long)]
        resend: bool,
        #[arg(long)]
        note: Option<String>,
    },
    /// Who did what to a sequence, and when.
    Audit {
        #[command(flatten)]
        client: Client,
        sequence: String,
    },
    /// What resuming a paused sequence now would send, and what it would skip.
    ResumePreview {
        #[command(flatten)]
        client: Client,
        sequence: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (client, request) = match cli.command {
        Command::Serve { roles } => {
            telemetry::init();
            let settings = Settings::from_env().context("reading configuration")?;
            let shutdown = CancellationToken::new();
            pulse::cancel_on_signal(shutdown.clone());
            let listener = pulse::bind(settings.http_addr).await?;
            pulse::serve(settings, roles, listener, shutdown).await?;
            return Ok(());
        }
        Command::Migrate => {
            telemetry::init();
            let settings = Settings::from_env().context("reading configuration")?;
            db::ensure_database(&settings.database_url)
                .await
                .context("creating the database")?;
            let pool = db::pool(&settings.database_url, 2)?;
            db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Sequences { client, action } => (client, Request::Sequences(action)),
        Command::Enrollments { client, action } => (client, Request::Enrollments(action)),
        Command::ReEnroll {
            client,
            sequence,
            leads,
            all_not_active,
        } => (
            client,
            Request::Reenroll {
                sequence,
                leads,
                all_not_active,
            },
        ),
        Command::Sends {
            client,
            sequence,
            lead,
            state,
            since,
            until,
            limit,
        } => (
            client,
            Request::Sends {
                sequence,
                lead,
                state,
                since,
                until,
                limit,
            },
        ),
        Command::Audit { client, sequence } => (client, Request::Audit { sequence }),
        Command::Resolve {
            client,
            key,
            sent,
            resend,
            note,
        } => (
            client,
            Request::Resolve {
                key,
                sent,
                resend,
                note,
            },
        ),
        Command::ResumePreview { client, sequence } => {
            (client, Request::ResumePreview { sequence })
        }
    };
    match cli::run(&client, request).await {
        Ok(out) => {
            println!("{out}");
            Ok(())
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            std::process::exit(failure.code);
        }
    }
}
