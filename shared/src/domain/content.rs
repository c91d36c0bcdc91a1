//! What one step says to one lead: the subject, the text part, the HTML part, and for a
//! threaded step the messages it answers. Owns the rules that turn a step's templates and the
//! lead's thread into a message's content (rendering, the derived text part, `Re:` subjects,
//! `In-Reply-To`/`References`, the rendered limits). Pure: it never touches a connection; the
//! scheduler calls it when it freezes a run's content.

use super::{
    limits,
    template::{self, LeadFields},
};

/// A step's templates, as stored.
#[derive(Clone, Copy, Debug)]
pub struct StepTemplates<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    pub html: Option<&'a str>,
    pub thread: bool,
}

/// The lead's thread so far in this enrollment: what went out before, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Thread {
    /// The subject of the first message sent (rendered, as frozen in its run).
    pub first_subject: Option<String>,
    /// The Message-IDs sent so far (`<…>`), oldest first.
    pub message_ids: Vec<String>,
}

/// A step rendered for one lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// For a threaded step with earlier messages: the last of them.
    pub in_reply_to: Option<String>,
    /// For a threaded step with earlier messages: all of them, oldest first, space-separated.
    pub references: Option<String>,
}

/// Width of the text part derived from HTML (a line length every mail client shows unwrapped).
const DERIVED_TEXT_WIDTH: usize = 78;

/// Renders `step` for `lead`. `thread` is what the enrollment sent before this step (used only
/// when the step is threaded); `fallback_subject` is the sequence's first step's subject
/// template, used by a threaded step with no subject of its own when nothing was sent before it.
/// The error says why the run cannot be sent (it is recorded as the run's FAILED reason).
pub fn render(
    step: StepTemplates<'_>,
    lead: &LeadFields<'_>,
    thread: Option<&Thread>,
    fallback_subject: Option<&str>,
) -> Result<Content, String> {
    let own_subject = template::render(step.subject, lead)?;
    let earlier = thread.filter(|t| step.thread && !t.message_ids.is_empty());
    let subject = match (own_subject.trim().is_empty(), earlier) {
        (false, _) => own_subject,
        (
            true,
            Some(Thread {
                first_subject: Some(first),
                ..
            }),
        ) => reply_subject(first),
        (true, _) => match fallback_subject {
            Some(first) => template::render(first, lead)?,
            None => String::new(),
        },
    };
    if subject.trim().is_empty() {
        return Err("the step renders an empty subject".into());
    }
    if subject.len() > limits::SUBJECT_BYTES {
        return Err(format!(
            "the rendered subject is {} bytes; the limit is {} (one header line)",
            subject.len(),
            limits::SUBJECT_BYTES
        ));
    }
    let html = step
        .html
        .map(|h| template::render_html(h, lead))
        .transpose()?;
    let mut text = template::render(step.body, lead)?;
    if text.trim().is_empty()
        && let Some(html) = &html
    {
        text = html2text::from_read(html.as_bytes(), DERIVED_TEXT_WIDTH)
            .map_err(|e| format!("the HTML part cannot be read to derive the text part: {e}"))?;
    }
    for (part, rendered) in [("body", Some(&text)), ("HTML part", html.as_ref())] {
        if let Some(r) = rendered
            && r.len() > limits::BODY_BYTES
        {
            return Err(format!(
                "the rendered {part} is {} bytes; the limit is {}",
                r.len(),
                limits::BODY_BYTES
            ));
        }
    }
    let (in_reply_to, references) = match earlier {
        Some(t) => (t.message_ids.last().cloned(), Some(t.message_ids.join(" "))),
        None => (None, None),
    };
    Ok(Content {
        subject,
        text,
        html,
        in_reply_to,
        references,
    })
}

/// `Re: <subject>`, without stacking a second `Re:`.
fn reply_subject(first: &str) -> String {
    let bare = first.trim();
    let has_re = bare.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("re:"));
    if has_re {
        bare.to_owned()
    } else {
        format!("Re: {bare}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead() -> LeadFields<'static> {
        LeadFields {
            email: "ada@example.com",
            first_name: Some("Ada <3"),
            ..Default::default()
        }
    }

    fn step<'a>(subject: &'a str, body: &'a str, html: Option<&'a str>) -> StepTemplates<'a> {
        StepTemplates {
            subject,
            body,
            html,
            thread: false,
        }
    }

    #[test]
    fn an_html_step_escapes_lead_values_and_derives_its_text_part_when_the_body_is_empty() {
        let c = render(
            step("Hi", "", Some("<p>Hello <b>{{ lead.first_name }}</b></p>")),
            &lead(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.html.as_deref(), Some("<p>Hello <b>Ada &lt;3</b></p>"));
        assert!(
            c.text.contains("Hello") && c.text.contains("Ada <3"),
            "{:?}",
            c.text
        );
        assert!(!c.text.contains("<p>"), "{:?}", c.text);
        // A body of its own is kept.
        let c = render(
            step("Hi", "Plain {{ lead.first_name }}", Some("<p>x</p>")),
            &lead(),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.text, "Plain Ada <3");
    }

    #[test]
    fn a_threaded_step_answers_the_last_message_and_takes_re_of_the_first_subject() {
        let thread = Thread {
            first_subject: Some("Quick question".into()),
            message_ids: vec!["<a@x>".into(), "<b@x>".into()],
        };
        let threaded = StepTemplates {
            thread: true,
            ..step("", "Bumping this", None)
        };
        let c = render(threaded, &lead(), Some(&thread), Some("unused")).unwrap();
        assert_eq!(c.subject, "Re: Quick question");
        assert_eq!(c.in_reply_to.as_deref(), Some("<b@x>"));
        assert_eq!(c.references.as_deref(), Some("<a@x> <b@x>"));
        // Its own subject wins, and a `Re:` is never doubled.
        let own = StepTemplates {
            subject: "New angle",
            ..threaded
        };
        assert_eq!(
            render(own, &lead(), Some(&thread), None).unwrap().subject,
            "New angle"
        );
        let re = Thread {
            first_subject: Some("RE: Quick".into()),
            ..thread.clone()
        };
        assert_eq!(
            render(threaded, &lead(), Some(&re), None).unwrap().subject,
            "RE: Quick"
        );
        // A step that is not threaded ignores the thread.
        let plain = render(step("S", "B", None), &lead(), Some(&thread), None).unwrap();
        assert_eq!((plain.in_reply_to, plain.references), (None, None));
    }

    #[test]
    fn a_threaded_step_with_nothing_sent_before_it_starts_the_thread_with_the_first_subject() {
        let threaded = StepTemplates {
            thread: true,
            ..step("", "Hello", None)
        };
        let c = render(
            threaded,
            &lead(),
            Some(&Thread::default()),
            Some("Hi {{ lead.first_name }}"),
        )
        .unwrap();
        assert_eq!(c.subject, "Hi Ada <3");
        assert_eq!((c.in_reply_to, c.references), (None, None));
        assert!(render(threaded, &lead(), None, None).is_err());
    }
}
