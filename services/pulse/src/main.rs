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
        self, Admin, AdminClient, Client, EnrollArgs, Enrollments, Events, Inbound, Keys,
        Mailboxes, ReenrollArgs, Request, ResolveArgs, SendsFilter, Sequences, Steps, Suppressions,
    },
};
use pulse_shared::{Settings, db, telemetry};
use tokio_util::sync::CancellationToken;

/// The help page's tasks, as `pulse --help` ends with them.
const EXAMPLES: &str = "\
Taking control (SEQ is a sequence's id or exact name):
  pulse sequences pause \"Welcome\"                      stop sending now
  pulse resume-preview \"Welcome\"                       what a resume would send, and when
  pulse sequences resume \"Welcome\"
  pulse enrollments cancel \"Welcome\" --lead eve@example.com --reason \"asked\"
  pulse enrollments cancel-many \"Welcome\" --all-active --yes
  pulse steps edit \"Welcome\" 2 --subject \"New subject\" --body-file step2.txt
  pulse steps add \"Welcome\" --subject \"Nudge\" --body \"…\" --delay P3D --position 3 --yes
  pulse steps move \"Welcome\" 3 --to 1 --yes
  pulse steps delete \"Welcome\" 2 --yes
  pulse re-enroll \"Welcome\" --lead eve@example.com
  pulse sequences delete \"Welcome\" --yes                irreversible; prefer pause
Reading the records:
  pulse enrollments list \"Welcome\" --status ACTIVE --all
  pulse enrollments show \"Welcome\" --lead eve@example.com --tz Europe/Paris
  pulse sends --sequence \"Welcome\" --state FAILED
  pulse audit \"Welcome\"
Settling what the relay may have accepted:
  pulse sends --state UNKNOWN --message-ids           grep the relay's log with these
  pulse resolve KEY --sent | --resend
Never mail someone again:
  pulse suppressions add eve@example.com --reason unsubscribed

Exit codes: 0 done, 1 the API refused (message printed), 2 bad usage, 3 Pulse unreachable.";

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Multi-step email sequences you can take control of",
    after_help = EXAMPLES
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
    /// API keys of the workspace (an admin key): create, list, revoke.
    Keys {
        #[command(flatten)]
        client: Client,
        #[command(subcommand)]
        action: Keys,
    },
    /// The platform administrator's commands (`PULSE_ADMIN_KEY`): workspaces.
    Admin {
        #[command(flatten)]
        client: AdminClient,
        #[command(subcommand)]
        action: Admin,
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
    /// Who did what to a sequence, and when: newest first, a page at a time.
    Audit {
        #[command(flatten)]
        client: Client,
        /// The sequence: its id or its exact name.
        sequence: String,
        /// The next (older) page: the number printed after "more: --before".
        #[arg(long)]
        before: Option<i64>,
    },
    /// What resuming a paused sequence now would send, and what it would skip.
    ResumePreview {
        #[command(flatten)]
        client: Client,
        /// The sequence: its id or its exact name.
        sequence: String,
    },
}

/// `pulse serve` could not start, or stopped on an error (configuration, a port, a dependency).
const EXIT_SERVE: i32 = 4;
/// `pulse migrate` could not create the database or apply a migration.
const EXIT_MIGRATE: i32 = 5;

/// Ends the process with `code` when `done` failed, after printing the error and its causes.
fn exit_on(code: i32, done: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = done {
        eprintln!("error: {e:#}");
        std::process::exit(code);
    }
    Ok(())
}

async fn serve(roles: Vec<Role>) -> anyhow::Result<()> {
    let telemetry =
        telemetry::init(&pulse::service_name(&roles)).context("setting up telemetry")?;
    let settings = Settings::from_env().context("reading configuration")?;
    let shutdown = CancellationToken::new();
    pulse::cancel_on_signal(shutdown.clone());
    let listeners = pulse::bind(&settings, &roles).await?;
    let served = pulse::serve(settings, roles, listeners, shutdown).await;
    // Spans of the last sends are still buffered: export them before exiting.
    telemetry.shutdown();
    Ok(served?)
}

async fn migrate() -> anyhow::Result<()> {
    telemetry::init_with_default(telemetry::DEFAULT_FILTER);
    let settings = Settings::from_env().context("reading configuration")?;
    db::ensure_database(&settings.database_url)
        .await
        .context("creating the database")?;
    let pool = db::pool_for(&settings, 2)?;
    db::migrate(&pool).await.context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (client, request) = match cli.command {
        Command::Serve { roles } => return exit_on(EXIT_SERVE, serve(roles).await),
        Command::Migrate => return exit_on(EXIT_MIGRATE, migrate().await),
        Command::Sequences { client, action } => (client, Request::Sequences(action)),
        Command::Mailboxes { client, action } => (client, Request::Mailboxes(action)),
        Command::Steps { client, action } => (client, Request::Steps(action)),
        Command::Suppressions { client, action } => (client, Request::Suppressions(action)),
        Command::Inbound { client, action } => (client, Request::Inbound(action)),
        Command::Keys { client, action } => (client, Request::Keys(action)),
        Command::Admin { client, action } => (client.into(), Request::Admin(action)),
        Command::Enrollments { client, action } => (client, Request::Enrollments(action)),
        Command::ReEnroll { client, args } => (client, Request::Reenroll(args)),
        Command::Enroll { client, args } => (client, Request::Enroll(args)),
        Command::Events { client, action } => (client, Request::Events(action)),
        Command::Outbox { client, limit } => (client, Request::Outbox { limit }),
        Command::Sends { client, filter } => (client, Request::Sends(filter)),
        Command::Audit {
            client,
            sequence,
            before,
        } => (client, Request::Audit { sequence, before }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example `pulse --help` shows is a command the parser takes.
    #[test]
    fn every_help_example_parses() {
        let mut seen = 0;
        for line in EXAMPLES.lines() {
            let Some(command) = line.trim_start().strip_prefix("pulse ") else {
                continue;
            };
            // The description follows the command after a run of spaces; `a | b` is two.
            let command = command.split("   ").next().unwrap_or_default();
            for variant in command.split(" | ") {
                let mut words = vec!["pulse".to_owned()];
                let mut quoted: Option<String> = None;
                for word in variant.split_whitespace() {
                    match (&mut quoted, word.strip_prefix('"')) {
                        (None, Some(rest)) if rest.ends_with('"') => {
                            words.push(rest.trim_end_matches('"').to_owned())
                        }
                        (None, Some(rest)) => quoted = Some(rest.to_owned()),
                        (Some(q), _) if word.ends_with('"') => {
                            q.push(' ');
                            q.push_str(word.trim_end_matches('"'));
                            words.extend(quoted.take());
                        }
                        (Some(q), _) => {
                            q.push(' ');
                            q.push_str(word);
                        }
                        (None, None) => words.push(word.to_owned()),
                    }
                }
                let mut words: Vec<String> = words;
                // `resolve KEY --sent | --resend`: the second variant lacks the command.
                if !matches!(words.get(1).map(String::as_str), Some(w) if !w.starts_with('-')) {
                    words.splice(1..1, ["resolve".to_owned(), "KEY".to_owned()]);
                }
                Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 18, "{seen} examples");
    }
}
