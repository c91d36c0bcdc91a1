//! Parsing of `PULSE_SMTP_URL` (`smtp://host[:port]`). Owns only the syntax; connecting is the
//! sender's business.

/// Where the SMTP relay listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
}

impl SmtpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("smtp://")
            .ok_or_else(|| format!("{url:?}: expected smtp://host[:port]"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(format!("{url:?}: SMTP authentication is not supported yet"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?;
                (h, port)
            }
            _ => (authority, 25),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: missing host"));
        }
        Ok(SmtpUrl {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port() {
        assert_eq!(
            SmtpUrl::parse("smtp://127.0.0.1:2525").unwrap(),
            SmtpUrl {
                host: "127.0.0.1".into(),
                port: 2525
            }
        );
        assert_eq!(SmtpUrl::parse("smtp://relay.local").unwrap().port, 25);
        assert_eq!(SmtpUrl::parse("smtp://[::1]:26").unwrap().host, "::1");
        assert!(SmtpUrl::parse("smtps://x").is_err());
        assert!(SmtpUrl::parse("smtp://:25").is_err());
        assert!(SmtpUrl::parse("smtp://x:notaport").is_err());
        assert!(SmtpUrl::parse("smtp://u:p@x:25").is_err());
    }
}
