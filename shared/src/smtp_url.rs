//! Parsing of `PULSE_SMTP_URL`, in lettre's conventions:
//!
//! * `smtp://host[:port]`: plain SMTP, for a local relay (port 25 by default);
//! * `smtp://user:pass@host[:port]?tls=required`: STARTTLS, refused if the relay does not offer
//!   it (port 587 by default);
//! * `smtp://user:pass@host[:port]?tls=opportunistic`: STARTTLS when offered;
//! * `smtps://user:pass@host[:port]`: implicit TLS (port 465 by default).
//!
//! The user and password are percent-decoded (`%40` for an `@` in a user name). The password
//! can also come from a file (`PULSE_SMTP_PASSWORD_FILE`, see [`SmtpUrl::with_password`]). It
//! never shows in `Debug` output or in an error. Owns only the syntax; connecting is the
//! sender's business.

use std::fmt;

/// How a relay connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// No TLS: local relays only.
    Plain,
    /// STARTTLS when the relay offers it, plain otherwise.
    Opportunistic,
    /// STARTTLS, or no connection.
    Required,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

impl Security {
    /// Whether the URL asks for TLS (then credentials are sent only once TLS is up).
    pub fn tls(self) -> bool {
        !matches!(self, Security::Plain)
    }
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// SMTP AUTH credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// Where the SMTP relay listens, and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
}

impl SmtpUrl {
    /// A plain relay at `host:port` (tests and local relays).
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            security: Security::Plain,
            credentials: None,
        }
    }

    /// Parses a URL. Errors name what is wrong and never contain the password.
    pub fn parse(raw: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected smtp://[user:pass@]host[:port][?tls=required|opportunistic] or smtps://[user:pass@]host[:port]";
        let url =
            url::Url::parse(raw.trim()).map_err(|e| format!("{}: {e}; {EXPECTED}", redact(raw)))?;
        let shown = redact(raw);
        let mut tls = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" => tls = Some(value.into_owned()),
                other => return Err(format!("{shown}: unknown parameter {other:?}; {EXPECTED}")),
            }
        }
        let (security, default_port) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => (Security::Plain, 25),
            ("smtp", Some("required")) => (Security::Required, 587),
            ("smtp", Some("opportunistic")) => (Security::Opportunistic, 587),
            ("smtps", None | Some("required")) => (Security::Implicit, 465),
            ("smtp" | "smtps", Some(other)) => {
                return Err(format!(
                    "{shown}: tls={other:?}; expected tls=required or tls=opportunistic"
                ));
            }
            _ => return Err(format!("{shown}: {EXPECTED}")),
        };
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{shown}: missing host"))?;
        if matches!(url.host(), Some(url::Host::Domain(_))) {
            crate::domain::validate::host(host).map_err(|m| format!("{shown}: {m}"))?;
        }
        if !matches!(url.path(), "" | "/") {
            return Err(format!("{shown}: unexpected path {:?}", url.path()));
        }
        let user = decode(url.username()).map_err(|e| format!("{shown}: user name {e}"))?;
        let password = match url.password() {
            Some(p) => Some(decode(p).map_err(|e| format!("{shown}: password {e}"))?),
            None => None,
        };
        let credentials = match (user.is_empty(), password) {
            (true, None) => None,
            (true, Some(_)) => return Err(format!("{shown}: a password without a user name")),
            (false, password) => Some(Credentials {
                user,
                password: Secret::new(password.unwrap_or_default()),
            }),
        };
        Ok(SmtpUrl {
            host: host.to_owned(),
            port: url.port().unwrap_or(default_port),
            security,
            credentials,
        })
    }

    /// Sets the AUTH password (from `PULSE_SMTP_PASSWORD_FILE`); the URL must name the user.
    pub fn with_password(mut self, password: Secret) -> Result<Self, String> {
        match &mut self.credentials {
            Some(credentials) => {
                credentials.password = password;
                Ok(self)
            }
            None => Err("a password file is set, but PULSE_SMTP_URL names no user".into()),
        }
    }
}

fn decode(part: &str) -> Result<String, String> {
    // The `url` crate leaves the user and password percent-encoded.
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "is not valid percent-encoded UTF-8".to_owned())
}

/// The URL with any password replaced, for error messages.
fn redact(raw: &str) -> String {
    match url::Url::parse(raw.trim()) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("<redacted>"));
            url.to_string()
        }
        Ok(_) => raw.trim().to_owned(),
        // Unparsable: keep at most the scheme, since the rest may hold a password.
        Err(_) => match raw.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => format!("{scheme}://<redacted>"),
            _ => raw.trim().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_keep_their_meaning() {
        assert_eq!(
            SmtpUrl::parse("smtp://127.0.0.1:2525").unwrap(),
            SmtpUrl::plain("127.0.0.1", 2525)
        );
        assert_eq!(SmtpUrl::parse("smtp://relay.local").unwrap().port, 25);
        assert_eq!(SmtpUrl::parse("smtp://[::1]:26").unwrap().host, "::1");
        assert!(SmtpUrl::parse("http://x").is_err());
        assert!(SmtpUrl::parse("smtp://:25").is_err());
        assert!(SmtpUrl::parse("smtp://x:notaport").is_err());
        assert!(SmtpUrl::parse("smtp://x/path").is_err());
    }

    #[test]
    fn tls_modes_and_default_ports_follow_lettre() {
        let u = SmtpUrl::parse("smtps://u:p@smtp.example.com").unwrap();
        assert_eq!((u.security, u.port), (Security::Implicit, 465));
        let u = SmtpUrl::parse("smtp://u:p@smtp.example.com?tls=required").unwrap();
        assert_eq!((u.security, u.port), (Security::Required, 587));
        let u = SmtpUrl::parse("smtp://smtp.example.com:2587?tls=opportunistic").unwrap();
        assert_eq!((u.security, u.port), (Security::Opportunistic, 2587));
        assert!(SmtpUrl::parse("smtp://x?tls=maybe").is_err());
        assert!(SmtpUrl::parse("smtp://x?tsl=required").is_err());
    }

    #[test]
    fn credentials_are_decoded_and_never_printed() {
        let u = SmtpUrl::parse("smtp://rep%40example.com:s3cr%2Ft@smtp.gmail.com:587?tls=required")
            .unwrap();
        let c = u.credentials.clone().unwrap();
        assert_eq!(c.user, "rep@example.com");
        assert_eq!(c.password.expose(), "s3cr/t");
        assert!(!format!("{u:?}").contains("s3cr"));
        let err = SmtpUrl::parse("smtp://u:hunter2@x?tls=bogus").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let err = SmtpUrl::parse("smtp://u:hunter2@x:bad").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(SmtpUrl::parse("smtp://:p@x").is_err());
    }

    #[test]
    fn a_password_file_needs_a_user() {
        let u = SmtpUrl::parse("smtp://apikey@smtp.sendgrid.net?tls=required").unwrap();
        let u = u.with_password(Secret::new("from-file")).unwrap();
        assert_eq!(u.credentials.unwrap().password.expose(), "from-file");
        assert!(
            SmtpUrl::parse("smtp://x")
                .unwrap()
                .with_password(Secret::new("p"))
                .is_err()
        );
    }
}
