//! Subject and body templates. Owns the template language: `{{ lead.first_name }}` and
//! `{{ lead.first_name | default: "there" }}` over the lead's fields (`email`, `first_name`,
//! `last_name`, `timezone`) and attributes (`lead.attributes.company`), and the lead's one-click
//! unsubscribe link (`{{ unsubscribe_url }}`). Templates are checked when
//! a sequence is saved so that rendering at queue time cannot fail.

use serde_json::Value;

/// The lead fields a template can read.
#[derive(Clone, Debug, Default)]
pub struct LeadFields<'a> {
    pub email: &'a str,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub attributes: Option<&'a Value>,
    /// The lead's one-click unsubscribe link for this sequence (`{{ unsubscribe_url }}`).
    pub unsubscribe_url: Option<&'a str>,
}

#[derive(Debug, PartialEq)]
enum Piece<'t> {
    Text(&'t str),
    Var {
        path: Vec<&'t str>,
        default: Option<String>,
    },
}

/// Checks a template; the error says what is wrong and where.
pub fn validate(template: &str) -> Result<(), String> {
    parse(template).map(|_| ())
}

/// Renders a template for a lead. A field with no value renders as its default, or empty.
pub fn render(template: &str, lead: &LeadFields<'_>) -> Result<String, String> {
    render_with(template, lead, |out, v| out.push_str(v))
}

/// Renders an HTML template for a lead: lead values are HTML-escaped (a lead's `<b>` or `"`
/// shows as text and cannot open a tag or leave an attribute); the template's own text and its
/// defaults, written by the sequence's author, are kept as they are.
pub fn render_html(template: &str, lead: &LeadFields<'_>) -> Result<String, String> {
    render_with(template, lead, escape_html)
}

fn render_with(
    template: &str,
    lead: &LeadFields<'_>,
    push_value: fn(&mut String, &str),
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    for piece in parse(template)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var { path, default } => match lookup(&path, lead) {
                Some(v) if !v.is_empty() => push_value(&mut out, &v),
                _ => out.push_str(default.as_deref().unwrap_or("")),
            },
        }
    }
    Ok(out)
}

fn escape_html(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn lookup(path: &[&str], lead: &LeadFields<'_>) -> Option<String> {
    match path {
        ["lead", "email"] => Some(lead.email.to_owned()),
        ["lead", "first_name"] => lead.first_name.map(str::to_owned),
        ["lead", "last_name"] => lead.last_name.map(str::to_owned),
        ["lead", "timezone"] => lead.timezone.map(str::to_owned),
        ["unsubscribe_url"] => lead.unsubscribe_url.map(str::to_owned),
        ["lead", "attributes", key] => match lead.attributes?.get(*key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        },
        _ => None,
    }
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed {{{{ at byte {}",
                template.len() - rest.len() + open
            )
        })?;
        pieces.push(parse_var(after[..close].trim())?);
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

fn parse_var(expr: &str) -> Result<Piece<'_>, String> {
    let (path_src, default) = match expr.split_once('|') {
        None => (expr.trim(), None),
        Some((p, filter)) => {
            let filter = filter.trim();
            let arg = filter
                .strip_prefix("default")
                .map(str::trim_start)
                .and_then(|f| f.strip_prefix(':'))
                .map(str::trim)
                .ok_or_else(|| format!("unknown filter {filter:?} (only `default: \"…\"`)"))?;
            let text = arg
                .strip_prefix('"')
                .and_then(|a| a.strip_suffix('"'))
                .ok_or_else(|| format!("default needs a quoted text, got {arg:?}"))?;
            (p.trim(), Some(text.to_owned()))
        }
    };
    let path: Vec<&str> = path_src.split('.').collect();
    let known = matches!(
        path.as_slice(),
        ["lead", "email" | "first_name" | "last_name" | "timezone"] | ["unsubscribe_url"]
    ) || matches!(path.as_slice(), ["lead", "attributes", k] if !k.is_empty());
    if !known {
        return Err(format!(
            "unknown variable {path_src:?}; use lead.email, lead.first_name, lead.last_name, \
             lead.timezone, lead.attributes.<name> or unsubscribe_url"
        ));
    }
    Ok(Piece::Var { path, default })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ada() -> (Value, &'static str) {
        (
            json!({"company": "Analytical", "seats": 3, "gone": null}),
            "ada@example.com",
        )
    }

    #[test]
    fn html_rendering_escapes_lead_values_and_keeps_the_authors_markup() {
        let attrs = json!({"company": "<script>x</script> & \"Co\""});
        let lead = LeadFields {
            email: "a@example.com",
            first_name: Some("O'Brien"),
            attributes: Some(&attrs),
            ..Default::default()
        };
        let html = render_html(
            "<p title=\"{{ lead.first_name }}\">Hi <b>{{ lead.last_name | default: \"<i>there</i>\" }}</b> at {{ lead.attributes.company }}</p>",
            &lead,
        )
        .unwrap();
        assert_eq!(
            html,
            "<p title=\"O&#39;Brien\">Hi <b><i>there</i></b> at &lt;script&gt;x&lt;/script&gt; &amp; &quot;Co&quot;</p>"
        );
        // The text part is not escaped.
        assert_eq!(render("{{ lead.first_name }}", &lead).unwrap(), "O'Brien");
    }

    #[test]
    fn renders_fields_attributes_and_defaults() {
        let (attrs, email) = ada();
        let lead = LeadFields {
            email,
            first_name: Some("Ada"),
            attributes: Some(&attrs),
            ..Default::default()
        };
        assert_eq!(
            render("Hi {{ lead.first_name }}!", &lead).unwrap(),
            "Hi Ada!"
        );
        assert_eq!(
            render(
                "{{lead.attributes.company}} x{{ lead.attributes.seats }}",
                &lead
            )
            .unwrap(),
            "Analytical x3"
        );
        assert_eq!(
            render("Hi {{ lead.last_name | default: \"friend\" }}", &lead).unwrap(),
            "Hi friend"
        );
        assert_eq!(render("[{{ lead.attributes.gone }}]", &lead).unwrap(), "[]");
        assert_eq!(
            render("to {{ lead.email }}", &lead).unwrap(),
            "to ada@example.com"
        );
        assert_eq!(render("no vars", &lead).unwrap(), "no vars");
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "Hi {{ lead.first_name",
            "{{ lead.password }}",
            "{{ user.name }}",
            "{{ lead.attributes. }}",
            "{{ lead.first_name | upper }}",
            "{{ lead.first_name | default: there }}",
            "{{ }}",
        ] {
            assert!(validate(bad).is_err(), "{bad} accepted");
        }
        assert!(validate("Hi {{ lead.first_name | default: \"you\" }}").is_ok());
    }
}
