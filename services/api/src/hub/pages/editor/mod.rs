//! The sequence editor that "New sequence" and "Edit" share. A [`Draft`] is the form as typed
//! (text, not yet checked): it is read from a sequence or from a posted form, rendered as the
//! form, and turned into the API's create or edit body. Steps are cards with their timing in
//! words ("send 2 days after the previous step"), the send window is days and hours, and
//! triggers are rows.
//!
//! Moving a card up or down, adding or removing one and adding a trigger row are submit
//! buttons (`do=up:2`, …): the page comes back with the draft changed and nothing saved, so the
//! editor works without JavaScript. This module owns no rule: what a value may be is the API's
//! to say, and its errors come back next to the field they name ([`Errors::from_api`]).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use pulse_shared::{
    domain::{timing::Timing, window::SendWindow},
    http::ApiError,
    model::{
        CreateSequence, EditSequence, ExitOnReply, ScoreMode, SenderIdentity, Sequence, StepInput,
        TriggerSpec,
    },
};
use uuid::Uuid;

use super::super::session::FormData;

const DAYS: [(&str, &str); 7] = [
    ("mon", "Mon"),
    ("tue", "Tue"),
    ("wed", "Wed"),
    ("thu", "Thu"),
    ("fri", "Fri"),
    ("sat", "Sat"),
    ("sun", "Sun"),
];

/// Delay units, largest first, with their length in seconds and their ISO-8601 letter.
const UNITS: [(&str, &str, i64); 5] = [
    ("weeks", "W", 604_800),
    ("days", "D", 86_400),
    ("hours", "H", 3_600),
    ("minutes", "M", 60),
    ("seconds", "S", 1),
];

/// One step card as typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DraftStep {
    /// The step's id; empty for a step this draft adds.
    pub id: String,
    pub subject: String,
    pub body: String,
    pub html: String,
    pub thread: bool,
    /// `immediately`, `after` or `on`.
    pub when: String,
    pub after_n: String,
    /// One of [`UNITS`]' names.
    pub after_unit: String,
    /// `YYYY-MM-DDTHH:MM`, in the sequence's time zone.
    pub on: String,
    pub end: String,
    pub lateness: String,
    pub delete: bool,
}

/// One trigger row as typed: `tag_applied`, `list_added`, `lead_score` or `lead_score_level`,
/// and its tag, list or minimum score.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DraftTrigger {
    pub kind: String,
    pub value: String,
}

/// One sending-limit row as typed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DraftLimit {
    pub max: String,
    pub per: String,
}

/// A sequence as the editor holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draft {
    pub name: String,
    pub sender: String,
    pub reply_to: String,
    /// The mailboxes ticked: the sequence sends from them, one per lead (else from `sender`).
    pub mailbox_ids: Vec<String>,
    /// Sending limits as rows: most sends, and per what period (an ISO-8601 duration).
    pub limits: Vec<DraftLimit>,
    pub timezone: String,
    pub rate: String,
    pub exit_on_reply: String,
    pub end_date: String,
    pub window_days: Vec<String>,
    pub window_start: String,
    pub window_end: String,
    pub steps: Vec<DraftStep>,
    pub triggers: Vec<DraftTrigger>,
    /// The version an edit starts from (refused if the sequence changed meanwhile).
    pub version: Option<i32>,
    /// The lead the messages are previewed for (empty: a sample lead).
    pub preview_lead: String,
}

/// What the API's body was made of: the request's step `i` is card `cards[i]`.
pub struct Built<T> {
    pub body: T,
    cards: Vec<usize>,
}

/// Errors to show: by field (`name`, `sender`, `step:2`, `triggers`, …) or for the whole form.
#[derive(Debug, Default)]
pub struct Errors {
    pub fields: HashMap<String, String>,
    pub general: Vec<String>,
}

impl Errors {
    pub fn field(key: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Errors::default();
        e.fields.insert(key.into(), message.into());
        e
    }

    /// Places an API error next to the field it names (`steps[1].timing` is the card the
    /// request's step 1 came from); one that names no field of the form is shown on top.
    pub fn from_api(e: &ApiError, cards: &[usize]) -> Self {
        let (field, message) = match e {
            ApiError::Invalid(f) => (Some(f.field.as_str()), f.message.clone()),
            ApiError::Malformed { field, message } => (field.as_deref(), message.clone()),
            other => (None, other.to_string()),
        };
        let key = field.and_then(|f| form_key(f, cards));
        match key {
            Some(k) => Errors::field(k, message),
            None => Errors {
                general: vec![match field {
                    Some(f) => format!("{f}: {message}"),
                    None => message,
                }],
                ..Default::default()
            },
        }
    }

    fn at(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// The form's key for an API error field: `steps[N]…` → `step:<card>`, `send_window…` →
/// `send_window`, `triggers…` → `triggers`, `sender…` → `sender`, a setting by its name.
fn form_key(field: &str, cards: &[usize]) -> Option<String> {
    if let Some(rest) = field.strip_prefix("steps[") {
        let i: usize = rest.split(']').next()?.parse().ok()?;
        return cards.get(i).map(|c| format!("step:{c}"));
    }
    if field == "steps" {
        return Some("steps".into());
    }
    let head = field.split(['.', '[']).next().unwrap_or(field);
    match head {
        "sender"
        | "send_window"
        | "triggers"
        | "name"
        | "timezone"
        | "max_sends_per_minute"
        | "end_date"
        | "exit_on_reply"
        | "limits" => Some(head.to_owned()),
        "lead_email" | "lead" => Some("preview_lead".to_owned()),
        _ => None,
    }
}

impl Draft {
    /// A new sequence: one step sent at once, one empty trigger row.
    pub fn blank() -> Self {
        Draft {
            timezone: "UTC".into(),
            exit_on_reply: ExitOnReply::Enrollment.as_str().into(),
            window_start: "09:00".into(),
            window_end: "17:00".into(),
            steps: vec![DraftStep::blank()],
            triggers: vec![DraftTrigger {
                kind: "tag_applied".into(),
                value: String::new(),
            }],
            ..Default::default()
        }
    }

    pub fn from_sequence(s: &Sequence) -> Self {
        let tz = zone(&s.timezone);
        let window = s.send_window.as_ref();
        Draft {
            name: s.name.clone(),
            sender: s.sender.from.clone().unwrap_or_default(),
            reply_to: s.sender.reply_to.clone().unwrap_or_default(),
            mailbox_ids: s
                .sender
                .mailbox_ids
                .iter()
                .flatten()
                .map(Uuid::to_string)
                .collect(),
            limits: s
                .limits
                .iter()
                .map(|l| DraftLimit {
                    max: l.max.to_string(),
                    per: l.per.clone(),
                })
                .collect(),
            timezone: s.timezone.clone(),
            rate: s
                .max_sends_per_minute
                .map(|r| r.to_string())
                .unwrap_or_default(),
            exit_on_reply: s.exit_on_reply.as_str().into(),
            end_date: s.end_date.map(|d| d.to_rfc3339()).unwrap_or_default(),
            window_days: window.map(|w| w.days.clone()).unwrap_or_default(),
            window_start: window.map_or("09:00".into(), |w| w.start.clone()),
            window_end: window.map_or("17:00".into(), |w| w.end.clone()),
            steps: s
                .steps
                .iter()
                .map(|st| {
                    let mut d = DraftStep {
                        id: st.id.to_string(),
                        subject: st.subject.clone(),
                        body: st.body.clone(),
                        html: st.html.clone().unwrap_or_default(),
                        thread: st.thread,
                        end: st.end_date.map(|d| d.to_rfc3339()).unwrap_or_default(),
                        lateness: st.max_lateness.clone().unwrap_or_default(),
                        ..DraftStep::blank()
                    };
                    d.set_timing(&st.timing, tz);
                    d
                })
                .collect(),
            triggers: s.triggers.iter().map(DraftTrigger::from_spec).collect(),
            version: Some(s.version),
            preview_lead: String::new(),
        }
    }

    /// The draft a posted editor form holds (rows whose fields do not line up are dropped).
    pub fn from_form(form: &FormData) -> Self {
        let col = |name: &str| form.all(name);
        let (ids, subjects, bodies, htmls) = (
            col("step_id"),
            col("step_subject"),
            col("step_body"),
            col("step_html"),
        );
        let (threads, whens, ns, units) = (
            col("step_thread"),
            col("step_when"),
            col("step_after_n"),
            col("step_after_unit"),
        );
        let (ons, ends, lateness, deleted) = (
            col("step_on"),
            col("step_end"),
            col("step_lateness"),
            col("step_delete"),
        );
        let at = |c: &[&str], i: usize| c.get(i).map_or(String::new(), |v| (*v).to_owned());
        let steps = (0..ids.len())
            .map(|i| DraftStep {
                id: at(&ids, i),
                subject: at(&subjects, i),
                body: at(&bodies, i),
                html: at(&htmls, i),
                thread: at(&threads, i) == "yes",
                when: at(&whens, i),
                after_n: at(&ns, i),
                after_unit: at(&units, i),
                on: at(&ons, i),
                end: at(&ends, i),
                lateness: at(&lateness, i),
                delete: !ids[i].is_empty() && deleted.contains(&ids[i]),
            })
            .collect();
        let (kinds, values) = (col("trigger_kind"), col("trigger_value"));
        let triggers = kinds
            .iter()
            .zip(&values)
            .map(|(k, v)| DraftTrigger {
                kind: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect();
        let text = |name: &str| form.raw(name).to_owned();
        Draft {
            name: text("name"),
            sender: text("sender"),
            reply_to: text("reply_to"),
            mailbox_ids: col("mailbox_id").into_iter().map(str::to_owned).collect(),
            limits: col("limit_max")
                .iter()
                .zip(col("limit_per"))
                .map(|(max, per)| DraftLimit {
                    max: (*max).to_owned(),
                    per: per.to_owned(),
                })
                .collect(),
            timezone: text("timezone"),
            rate: text("max_sends_per_minute"),
            exit_on_reply: text("exit_on_reply"),
            end_date: text("end_date"),
            window_days: col("window_day").into_iter().map(str::to_owned).collect(),
            window_start: text("window_start"),
            window_end: text("window_end"),
            steps,
            triggers,
            version: form.get("version").and_then(|v| v.parse().ok()),
            preview_lead: text("preview_lead"),
        }
    }

    /// Carries out an editor button (`add`, `up:N`, `down:N`, `remove:N`, `add_trigger`);
    /// false when `action` is none of them.
    pub fn rearrange(&mut self, action: &str) -> bool {
        let (verb, n) = match action.split_once(':') {
            Some((v, n)) => (v, n.parse::<usize>().ok()),
            None => (action, None),
        };
        match (verb, n) {
            ("add", None) => {
                let mut step = DraftStep::blank();
                step.when = "after".into();
                step.after_n = "2".into();
                step.after_unit = "days".into();
                self.steps.push(step);
            }
            ("add_trigger", None) => self.triggers.push(DraftTrigger {
                kind: "tag_applied".into(),
                value: String::new(),
            }),
            ("add_limit", None) => self.limits.push(DraftLimit {
                max: String::new(),
                per: "P1D".into(),
            }),
            ("up", Some(i)) if i > 0 && i < self.steps.len() => self.steps.swap(i - 1, i),
            ("down", Some(i)) if i + 1 < self.steps.len() => self.steps.swap(i, i + 1),
            ("remove", Some(i)) if i < self.steps.len() && self.steps[i].id.is_empty() => {
                self.steps.remove(i);
            }
            _ => return false,
        }
        true
    }

    fn zone(&self) -> chrono_tz::Tz {
        zone(&self.timezone)
    }

    /// The steps to send, in card order: deleted cards and empty new ones left out.
    fn step_inputs(&self) -> Result<(Vec<StepInput>, Vec<usize>), Errors> {
        let mut steps = Vec::new();
        let mut cards = Vec::new();
        for (c, card) in self.steps.iter().enumerate() {
            let blank = card.subject.trim().is_empty()
                && card.body.trim().is_empty()
                && card.html.trim().is_empty();
            if card.delete || (card.id.is_empty() && blank) {
                continue;
            }
            let bad = |m: String| Errors::field(format!("step:{c}"), m);
            let id = match card.id.as_str() {
                "" => None,
                id => Some(
                    id.parse::<Uuid>()
                        .map_err(|_| bad("this step's id is damaged; reload the page".into()))?,
                ),
            };
            let end_date = match card.end.trim() {
                "" => None,
                d => Some(
                    DateTime::parse_from_rfc3339(d)
                        .map_err(|e| bad(format!("end date: {e}")))?
                        .with_timezone(&Utc),
                ),
            };
            steps.push(StepInput {
                id,
                position: None,
                subject: card.subject.trim().to_owned(),
                body: card.body.clone(),
                html: (!card.html.trim().is_empty()).then(|| card.html.clone()),
                thread: card.thread,
                timing: card.timing(self.zone()).map_err(bad)?,
                end_date,
                max_lateness: Some(card.lateness.trim())
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            });
            cards.push(c);
        }
        Ok((steps, cards))
    }

    fn window(&self) -> Option<SendWindow> {
        (!self.window_days.is_empty()).then(|| SendWindow {
            days: self.window_days.clone(),
            start: self.window_start.trim().to_owned(),
            end: self.window_end.trim().to_owned(),
        })
    }

    fn trigger_specs(&self) -> Result<Vec<TriggerSpec>, Errors> {
        self.triggers
            .iter()
            .filter(|t| !t.value.trim().is_empty())
            .map(|t| t.spec().map_err(|m| Errors::field("triggers", m)))
            .collect()
    }

    fn end_date(&self) -> Result<Option<DateTime<Utc>>, Errors> {
        match self.end_date.trim() {
            "" => Ok(None),
            d => DateTime::parse_from_rfc3339(d)
                .map(|d| Some(d.with_timezone(&Utc)))
                .map_err(|e| Errors::field("end_date", format!("not an RFC 3339 time: {e}"))),
        }
    }

    fn rate(&self) -> Result<Option<i32>, Errors> {
        match self.rate.trim() {
            "" => Ok(None),
            r => r.parse().map(Some).map_err(|_| {
                Errors::field(
                    "max_sends_per_minute",
                    format!("{r:?} is not a whole number"),
                )
            }),
        }
    }

    fn exit_on_reply(&self) -> Result<Option<ExitOnReply>, Errors> {
        match self.exit_on_reply.trim() {
            "" => Ok(None),
            raw => serde_json::from_value(serde_json::Value::String(raw.to_owned()))
                .map(Some)
                .map_err(|_| Errors::field("exit_on_reply", format!("{raw:?} is not a choice"))),
        }
    }

    fn sender(&self) -> Result<SenderIdentity, Errors> {
        let reply_to = Some(self.reply_to.trim())
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        // Mailboxes ticked win: the sequence sends from them; else from the address given.
        if !self.mailbox_ids.is_empty() {
            let ids = self
                .mailbox_ids
                .iter()
                .map(|id| id.trim().parse::<Uuid>())
                .collect::<Result<_, _>>()
                .map_err(|_| Errors::field("sender", "the mailbox ids are damaged; reload"))?;
            return Ok(SenderIdentity {
                from: None,
                mailbox_ids: Some(ids),
                reply_to,
            });
        }
        Ok(SenderIdentity {
            from: Some(self.sender.trim().to_owned()),
            mailbox_ids: None,
            reply_to,
        })
    }

    /// The limit rows with a number; a row left empty adds nothing.
    fn limit_list(&self) -> Result<Vec<pulse_shared::limits::Limit>, Errors> {
        self.limits
            .iter()
            .filter(|l| !l.max.trim().is_empty())
            .map(|l| {
                let max = l.max.trim().parse().map_err(|_| {
                    Errors::field(
                        "limits",
                        format!("{:?} is not a whole number", l.max.trim()),
                    )
                })?;
                Ok(pulse_shared::limits::Limit {
                    max,
                    per: l.per.trim().to_owned(),
                })
            })
            .collect()
    }

    /// The `POST /v1/sequences` body.
    pub fn to_create(&self) -> Result<Built<CreateSequence>, Errors> {
        let (steps, cards) = self.step_inputs()?;
        Ok(Built {
            body: CreateSequence {
                name: self.name.trim().to_owned(),
                timezone: Some(self.timezone.trim().to_owned()).filter(|t| !t.is_empty()),
                steps,
                triggers: self.trigger_specs()?,
                sender: self.sender()?,
                send_window: self.window(),
                end_date: self.end_date()?,
                max_sends_per_minute: self.rate()?,
                limits: self.limit_list()?,
                guardrails: None,
                priority: None,
                exit_on_reply: self.exit_on_reply()?,
            },
            cards,
        })
    }

    /// The `PATCH /v1/sequences/{id}` body: every field the form shows (guardrails and
    /// priority are edited over the API and kept).
    pub fn to_edit(&self) -> Result<Built<EditSequence>, Errors> {
        let (steps, cards) = self.step_inputs()?;
        let deletes = self.steps.iter().any(|s| s.delete);
        Ok(Built {
            body: EditSequence {
                name: Some(self.name.trim().to_owned()),
                timezone: Some(self.timezone.trim().to_owned()),
                sender: Some(self.sender()?),
                delete_missing_steps: deletes,
                steps: Some(steps),
                triggers: Some(self.trigger_specs()?),
                send_window: Some(self.window()),
                end_date: Some(self.end_date()?),
                max_sends_per_minute: Some(self.rate()?),
                exit_on_reply: self.exit_on_reply()?,
                limits: Some(self.limit_list()?),
                version: self.version,
                ..Default::default()
            },
            cards,
        })
    }
}

impl<T> Built<T> {
    /// The API's error, placed next to the card or field it names.
    pub fn errors(&self, e: &ApiError) -> Errors {
        Errors::from_api(e, &self.cards)
    }
}

impl DraftStep {
    fn blank() -> Self {
        DraftStep {
            when: "immediately".into(),
            after_unit: "days".into(),
            ..Default::default()
        }
    }

    fn set_timing(&mut self, timing: &Timing, tz: chrono_tz::Tz) {
        match timing {
            Timing::Immediately {} => self.when = "immediately".into(),
            Timing::Delay { delay } => {
                self.when = "after".into();
                let secs = pulse_shared::domain::timing::parse_iso_duration(delay)
                    .map(|d| d.num_seconds())
                    .unwrap_or_default();
                let (unit, _, len) = UNITS
                    .iter()
                    .find(|(_, _, len)| secs % len == 0)
                    .copied()
                    .unwrap_or(UNITS[4]);
                self.after_n = (secs / len).to_string();
                self.after_unit = unit.into();
            }
            Timing::OnDate { at } => {
                self.when = "on".into();
                self.on = at.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string();
            }
        }
    }

    /// The card's timing as the API takes it; an error says what to fix.
    fn timing(&self, tz: chrono_tz::Tz) -> Result<Timing, String> {
        match self.when.as_str() {
            "immediately" => Ok(Timing::Immediately {}),
            "after" => {
                let n: u64 = self.after_n.trim().parse().map_err(|_| {
                    format!("timing: {:?} is not a whole number", self.after_n.trim())
                })?;
                let (_, letter, _) = UNITS
                    .iter()
                    .find(|(name, _, _)| *name == self.after_unit)
                    .ok_or_else(|| format!("timing: {:?} is not a unit", self.after_unit))?;
                let time = if matches!(*letter, "H" | "M" | "S") {
                    "T"
                } else {
                    ""
                };
                Ok(Timing::Delay {
                    delay: format!("P{time}{n}{letter}"),
                })
            }
            "on" => {
                let local = NaiveDateTime::parse_from_str(self.on.trim(), "%Y-%m-%dT%H:%M")
                    .map_err(|_| format!("timing: {:?} is not a date and time", self.on.trim()))?;
                let at = tz.from_local_datetime(&local).earliest().ok_or_else(|| {
                    "timing: that time does not exist in this time zone".to_owned()
                })?;
                Ok(Timing::OnDate {
                    at: at.with_timezone(&Utc),
                })
            }
            other => Err(format!("timing: {other:?} is not a choice")),
        }
    }
}

impl DraftTrigger {
    fn from_spec(t: &TriggerSpec) -> Self {
        let (kind, value) = match t {
            TriggerSpec::TagApplied { tag } => ("tag_applied", tag.clone()),
            TriggerSpec::ListAdded { list } => ("list_added", list.clone()),
            TriggerSpec::LeadScore { min_score, mode } => (
                match mode {
                    ScoreMode::Crossing => "lead_score",
                    ScoreMode::Level => "lead_score_level",
                },
                min_score.to_string(),
            ),
        };
        DraftTrigger {
            kind: kind.into(),
            value,
        }
    }

    fn spec(&self) -> Result<TriggerSpec, String> {
        let value = self.value.trim().to_owned();
        let score = |mode| {
            value
                .parse()
                .map(|min_score| TriggerSpec::LeadScore { min_score, mode })
                .map_err(|_| format!("a lead score is a whole number, not {value:?}"))
        };
        match self.kind.as_str() {
            "tag_applied" => Ok(TriggerSpec::TagApplied { tag: value }),
            "list_added" => Ok(TriggerSpec::ListAdded { list: value }),
            "lead_score" => score(ScoreMode::Crossing),
            "lead_score_level" => score(ScoreMode::Level),
            other => Err(format!("{other:?} is not a kind of trigger")),
        }
    }
}

fn zone(name: &str) -> chrono_tz::Tz {
    name.trim().parse().unwrap_or(chrono_tz::UTC)
}

mod render;
pub use render::fields;

#[cfg(test)]
mod tests;
