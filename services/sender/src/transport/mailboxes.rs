//! The relays and DKIM keys of sender mailboxes, and workspaces' DKIM keys. Owns one connection
//! pool per mailbox that has a relay of its own, and its parsed DKIM key, opened on the first send from it and kept while the
//! mailbox is unchanged (its `updated_at`); a mailbox without a relay sends through the global
//! transport. It never reads the database: the mailbox's settings come with each send's
//! snapshot, so an edit applies from the next send. Secrets never print.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use lettre::message::{
    dkim::{DkimCanonicalization, DkimCanonicalizationType, DkimConfig},
    header::HeaderName,
};
use pulse_shared::{
    ledger::{MailboxRoute, WorkspaceDkim},
    mailbox,
};
use uuid::Uuid;

use super::{SmtpPool, Transport};

/// Connections per mailbox relay: a rep's mailbox sends far less than the global relay.
pub const MAILBOX_POOL_SIZE: usize = 4;

/// Headers a DKIM signature covers (one absent from a message is signed as absent). Not
/// `Content-Type`: lettre writes a multipart message's `Content-Type` with the body, after it
/// signs, so it would be signed as absent and the signature would fail
/// (`dkim::mail_from_a_mailbox_with_a_key_is_dkim_signed_and_verifies_with_dkimpy`).
/// The unsubscribe headers are signed, as Gmail requires for one-click unsubscribe.
const SIGNED: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A mailbox's DKIM signing setup.
#[derive(Clone)]
pub struct Dkim(Arc<DkimConfig>);

impl Dkim {
    pub(super) fn config(&self) -> &DkimConfig {
        &self.0
    }
}

impl fmt::Debug for Dkim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dkim(<key redacted>)")
    }
}

/// Where one send goes and how it is signed.
pub struct Route {
    pub transport: Transport,
    pub dkim: Option<Dkim>,
}

struct Opened {
    updated_at: DateTime<Utc>,
    relay: Option<Arc<SmtpPool>>,
    dkim: Option<Dkim>,
}

/// Every mailbox this sender has sent from, and every workspace key it has signed with.
pub struct Mailboxes {
    opened: Mutex<HashMap<Uuid, Opened>>,
    workspace_keys: Mutex<HashMap<Uuid, (DateTime<Utc>, Dkim)>>,
    timeout: Duration,
    ca_pem: Option<Vec<u8>>,
}

impl Mailboxes {
    pub fn new(timeout: Duration, ca_pem: Option<Vec<u8>>) -> Self {
        Self {
            opened: Mutex::new(HashMap::new()),
            workspace_keys: Mutex::new(HashMap::new()),
            timeout,
            ca_pem,
        }
    }

    /// Where one send goes and how it is signed: its mailbox's relay (else `global`) and key,
    /// else the workspace's key when it signs for the domain of `from`. The error says why the
    /// send cannot go (a stored setting that no longer parses, a TLS setup that fails): nothing
    /// was sent, and the send is retried like one whose relay cannot be reached.
    pub fn for_send(
        &self,
        mailbox: Option<&MailboxRoute>,
        workspace_key: Option<&WorkspaceDkim>,
        from: &str,
        global: &Transport,
    ) -> Result<Route, String> {
        let mut route = match mailbox {
            Some(m) => self.route(m, global)?,
            None => Route {
                transport: global.clone(),
                dkim: None,
            },
        };
        if route.dkim.is_none()
            && let Some(key) = workspace_key
        {
            route.dkim = self.workspace_dkim(key, from)?;
        }
        Ok(route)
    }

    /// The transport and signing of a send from `mailbox`; `global` when it has no relay of its
    /// own.
    fn route(&self, mailbox: &MailboxRoute, global: &Transport) -> Result<Route, String> {
        let mut opened = self
            .opened
            .lock()
            .map_err(|_| "the mailbox registry is poisoned".to_owned())?;
        let stale = opened
            .get(&mailbox.id)
            .is_none_or(|o| o.updated_at != mailbox.updated_at);
        if stale {
            let fresh = self.open(mailbox)?;
            // A replaced pool closes its idle connections when the last send using it ends.
            opened.insert(mailbox.id, fresh);
        }
        let o = opened
            .get(&mailbox.id)
            .ok_or_else(|| "the mailbox was not opened".to_owned())?;
        Ok(Route {
            transport: match &o.relay {
                Some(pool) => Transport::Smtp(pool.clone()),
                None => global.clone(),
            },
            dkim: o.dkim.clone(),
        })
    }

    /// The workspace's key, when it signs for the domain of `from` (a `Name <address>`).
    fn workspace_dkim(&self, key: &WorkspaceDkim, from: &str) -> Result<Option<Dkim>, String> {
        let domain = from
            .parse::<lettre::message::Mailbox>()
            .map(|m| m.email.domain().to_ascii_lowercase())
            .map_err(|e| format!("bad sender {from:?}: {e}"))?;
        if domain != key.domain {
            return Ok(None);
        }
        let mut keys = self
            .workspace_keys
            .lock()
            .map_err(|_| "the workspace key registry is poisoned".to_owned())?;
        if let Some((at, dkim)) = keys.get(&key.workspace)
            && *at == key.updated_at
        {
            return Ok(Some(dkim.clone()));
        }
        let fresh = dkim(&key.selector, &key.domain, key.private_key.expose())
            .map_err(|e| format!("workspace DKIM key: {e}"))?;
        keys.insert(key.workspace, (key.updated_at, fresh.clone()));
        Ok(Some(fresh))
    }

    fn open(&self, mailbox: &MailboxRoute) -> Result<Opened, String> {
        let relay = match &mailbox.smtp_url {
            Some(url) => {
                let password = mailbox.smtp_password.as_ref().map(|p| p.expose());
                let relay = mailbox::relay_url(url, password)
                    .map_err(|e| format!("mailbox {} relay: {e}", mailbox.id))?;
                let pool = SmtpPool::new(
                    relay,
                    MAILBOX_POOL_SIZE,
                    self.timeout,
                    self.ca_pem.as_deref(),
                )
                .map_err(|e| format!("mailbox {} relay: {e}", mailbox.id))?;
                Some(Arc::new(pool))
            }
            None => None,
        };
        let dkim = match &mailbox.dkim {
            Some((selector, key)) => Some(
                dkim(selector, &mailbox.domain, key.expose())
                    .map_err(|e| format!("mailbox {} DKIM key: {e}", mailbox.id))?,
            ),
            None => None,
        };
        Ok(Opened {
            updated_at: mailbox.updated_at,
            relay,
            dkim,
        })
    }
}

/// A DKIM signing setup: relaxed/relaxed over [`SIGNED`].
fn dkim(selector: &str, domain: &str, private_key: &str) -> Result<Dkim, String> {
    let key = mailbox::dkim_key(private_key)?;
    let headers = SIGNED
        .iter()
        .map(|h| HeaderName::new_from_ascii_str(h))
        .collect();
    let relaxed = DkimCanonicalization {
        header: DkimCanonicalizationType::Relaxed,
        body: DkimCanonicalizationType::Relaxed,
    };
    Ok(Dkim(Arc::new(DkimConfig::new(
        selector.to_owned(),
        domain.to_owned(),
        key,
        headers,
        relaxed,
    ))))
}
