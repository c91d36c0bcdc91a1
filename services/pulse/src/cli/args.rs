//! What an operator can ask: every command's arguments as clap parses them (help text and
//! allowed values included), and the [`Request`] they become. Parsing only; `run` acts on them.

use clap::{Args, Subcommand};

use super::{Admin, Inbound, Keys, Steps, Suppressions};

#[derive(Args, Debug)]
pub struct Client {
    /// Base URL of the Pulse API.
    #[arg(
        long,
        env = "PULSE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API key.
    #[arg(long, env = "PULSE_API_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show times in this IANA zone (Europe/Paris). Default: the sequence's zone in a sequence's
    /// views, else this machine's local time.
    #[arg(long, env = "PULSE_TZ", global = true)]
    pub tz: Option<String>,
}

/// The platform administrator's connection: the same as [`Client`], with `PULSE_ADMIN_KEY`.
#[derive(Args, Debug)]
pub struct AdminClient {
    /// Base URL of the Pulse API.
    #[arg(long, env = "PULSE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The platform key.
    #[arg(long, env = "PULSE_ADMIN_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl From<AdminClient> for Client {
    fn from(a: AdminClient) -> Self {
        Client {
            url: a.url,
            key: a.key,
            json: a.json,
            tz: None,
        }
    }
}

/// How a list command pages: `--limit`, `--after` (the id or key printed after "more:"), or
/// `--all` pages one after another.
#[derive(Args, Debug, Default)]
pub struct Paging {
    /// Rows per page (1 to 1000; the default is the list's own).
    #[arg(long)]
    pub limit: Option<i64>,
    /// The next page: what the previous one printed after "more:".
    #[arg(long)]
    pub after: Option<String>,
    /// Every page, one after another.
    #[arg(long, conflicts_with = "after")]
    pub all: bool,
}

impl Paging {
    /// The query pairs of one page.
    pub fn pairs(&self) -> [(&'static str, Option<String>); 2] {
        [
            ("limit", self.limit.map(|l| l.to_string())),
            ("after", self.after.clone()),
        ]
    }
}

#[derive(Subcommand, Debug)]
pub enum Sequences {
    /// List sequences, newest first, a page at a time (says "more:" when there is another).
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Create a sequence from a file, JSON or YAML (`.yaml`), as `POST /v1/sequences` takes it
    /// (name, sender, steps, triggers, settings); `-` reads standard input.
    Create {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Make the sequence named in a file (JSON or YAML) match it: created if no live sequence
    /// has that name, else edited. Prints what changes; structural changes need --yes.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Apply structural changes too (steps added, deleted or moved, timing, triggers,
        /// window, time zone, end date).
        #[arg(long)]
        yes: bool,
    },
    /// Each sequence's enrollments (enrolled, active, completed, cancelled, replied, bounced,
    /// complained) and today's sends.
    Stats,
    /// A sequence's saved versions: who changed it, when, and how many steps it had.
    Versions {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Show one sequence: steps, triggers, settings.
    Show {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Pause: nothing is sent from the moment this returns.
    Pause {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Resume a paused sequence (see resume-preview first).
    Resume {
        /// The sequence: its id or its exact name.
        id: String,
    },
    /// Delete permanently (irreversible; prefer pause). Needs --yes.
    Delete {
        /// The sequence: its id or its exact name.
        id: String,
        /// Confirm that deleting is irreversible.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum Mailboxes {
    /// The workspace's sender mailboxes (secrets are never shown).
    List,
    /// Add a mailbox to send from.
    Add {
        /// The bare address, e.g. ada@example.com.
        address: String,
        /// The name shown with it.
        #[arg(long)]
        name: Option<String>,
        /// Where replies go, when not to the address.
        #[arg(long)]
        reply_to: Option<String>,
        /// Its own relay, e.g. smtp://ada%40example.com@smtp.example.com:587?tls=required
        /// (default: the global relay). Put the password in --smtp-password-file, not here:
        /// a command line is visible to other users of the machine.
        #[arg(long)]
        smtp_url: Option<String>,
        /// A file holding the relay's AUTH password.
        #[arg(long)]
        smtp_password_file: Option<std::path::PathBuf>,
        /// DKIM selector; needs --dkim-key-file.
        #[arg(long, requires = "dkim_key_file")]
        dkim_selector: Option<String>,
        /// A file holding the DKIM private key (RSA PKCS#1 PEM, or an Ed25519 seed in base64).
        #[arg(long, requires = "dkim_selector")]
        dkim_key_file: Option<std::path::PathBuf>,
    },
    /// Delete a mailbox (refused while a sequence sends from it).
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum Enrollments {
    /// One enrollment and everything sent for it.
    Show {
        /// The enrollment's id; with --lead, the sequence (id or exact name).
        enrollment: String,
        /// The lead whose latest enrollment in that sequence to show (its email).
        #[arg(long)]
        lead: Option<String>,
    },
    /// The enrollments of a sequence: who got what, and when.
    List {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// Only enrollments in this status.
        #[arg(long, value_parser = ["ACTIVE", "COMPLETED", "CANCELLED", "FAILED", "INELIGIBLE"])]
        status: Option<String>,
        /// Only enrollments on the step at this position.
        #[arg(long)]
        step: Option<i32>,
        /// Only this lead's enrollments (its email).
        #[arg(long)]
        lead: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Cancel one enrollment: nothing more is sent to that lead from this sequence.
    ///
    /// By id (`pulse enrollments cancel ENROLLMENT_ID`) or by the lead's email
    /// (`pulse enrollments cancel "Welcome" --lead eve@example.com`).
    Cancel {
        /// The enrollment's id; with --lead, the sequence (id or exact name).
        enrollment: String,
        /// The lead whose ACTIVE enrollment in that sequence to cancel (its email).
        #[arg(long)]
        lead: Option<String>,
        /// Why, for the audit trail and the enrollment's end reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel many enrollments of a sequence: `--id` (repeatable), or `--all-active --yes`.
    CancelMany {
        /// The sequence: its id or its exact name.
        sequence: String,
        /// An enrollment id (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Every ACTIVE enrollment of the sequence (needs --yes).
        #[arg(long)]
        all_active: bool,
        /// Confirm --all-active.
        #[arg(long)]
        yes: bool,
        /// Why, for the audit trail and the enrollments' end reason.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Filters of `pulse sends`.
#[derive(Args, Debug)]
pub struct SendsFilter {
    /// Only this sequence's sends: its id or its exact name.
    #[arg(long)]
    pub sequence: Option<String>,
    /// Only this lead's sends (its email).
    #[arg(long)]
    pub lead: Option<String>,
    /// Only sends in this state.
    #[arg(long, value_parser = ["SENDING", "SENT", "DEFERRED", "FAILED", "UNKNOWN", "BOUNCED", "COMPLAINED"])]
    pub state: Option<String>,
    /// Only sends first attempted at or after this RFC 3339 time (2026-11-30T08:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only sends first attempted before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub paging: Paging,
    /// Print only the Message-IDs, one a line (to grep a relay's log with).
    #[arg(long)]
    pub message_ids: bool,
}

/// Arguments of `pulse re-enroll`.
#[derive(Args, Debug)]
pub struct ReenrollArgs {
    /// The sequence: its id or its exact name.
    pub sequence: String,
    /// A lead's email (repeatable).
    #[arg(long = "lead")]
    pub leads: Vec<String>,
    /// Everyone who is not currently active in the sequence.
    #[arg(long)]
    pub all_not_active: bool,
}

/// Arguments of `pulse resolve`: one UNKNOWN send by its key, or all of a sequence's and/or a
/// time range's (`--sequence`, `--since`, `--until`, with `--yes`).
#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// Idempotency key of the send (see `pulse sends --state UNKNOWN --json`); leave it out to
    /// settle in bulk. (Its own id: `key` is the API key's.)
    #[arg(id = "send_key", value_name = "KEY")]
    pub key: Option<String>,
    /// Bulk: the UNKNOWN sends of this sequence (its id or its exact name).
    #[arg(long)]
    pub sequence: Option<String>,
    /// Bulk: those first attempted at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Bulk: those first attempted before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Bulk: confirm settling them all the same way.
    #[arg(long)]
    pub yes: bool,
    /// It went out: record it SENT and move the enrollment on.
    #[arg(long)]
    pub sent: bool,
    /// It did not go out: send it again.
    #[arg(long)]
    pub resend: bool,
    /// What the relay's log showed, for the audit trail.
    #[arg(long)]
    pub note: Option<String>,
}

/// Arguments of `pulse enroll`.
#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The sequence: its id or its exact name.
    pub sequence: String,
    /// The lead's email (created if new).
    #[arg(long)]
    pub lead: String,
    /// The lead's first name, for templates.
    #[arg(long)]
    pub first_name: Option<String>,
}

/// `pulse events …`.
#[derive(Subcommand, Debug)]
pub enum Events {
    /// Send trigger events from a file (JSON or YAML): `{"events": [...]}` or a bare array, as
    /// `POST /v1/events` takes them (up to 1,000). Each event's outcome is printed.
    Send {
        /// The JSON file; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
}

/// What an operator command asks the API.
#[derive(Debug)]
pub enum Request {
    Steps(Steps),
    Enroll(EnrollArgs),
    Events(Events),
    /// The dev outbox: mail captured when no relay is configured.
    Outbox {
        limit: Option<i64>,
    },
    Sequences(Sequences),
    Mailboxes(Mailboxes),
    Suppressions(Suppressions),
    Inbound(Inbound),
    Keys(Keys),
    Admin(Admin),
    Enrollments(Enrollments),
    Reenroll(ReenrollArgs),
    Sends(SendsFilter),
    Audit {
        sequence: String,
        before: Option<i64>,
    },
    Resolve(ResolveArgs),
    ResumePreview {
        sequence: String,
    },
}
