use super::*;

fn form(pairs: &[(&str, &str)]) -> FormData {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    FormData::parse(body.as_bytes())
}

fn step<'a>(
    id: &'a str,
    subject: &'a str,
    when: &'a str,
    n: &'a str,
    unit: &'a str,
    on: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("step_id", id),
        ("step_subject", subject),
        ("step_body", if subject.is_empty() { "" } else { "b" }),
        ("step_html", ""),
        ("step_thread", "no"),
        ("step_when", when),
        ("step_after_n", n),
        ("step_after_unit", unit),
        ("step_on", on),
        ("step_end", ""),
        ("step_lateness", ""),
    ]
}

#[test]
fn timing_in_words_becomes_the_api_timing_and_back() {
    let mut pairs = vec![
        ("name", "N"),
        ("sender", "a@b.co"),
        ("timezone", "Europe/Paris"),
    ];
    pairs.extend(step("", "One", "immediately", "", "days", ""));
    pairs.extend(step("", "Two", "after", "90", "minutes", ""));
    pairs.extend(step("", "Three", "on", "", "days", "2030-06-01T09:30"));
    pairs.extend(step("", "", "after", "2", "days", ""));
    let d = Draft::from_form(&form(&pairs));
    let built = d.to_create().unwrap();
    let steps = &built.body.steps;
    assert_eq!(steps.len(), 3, "an empty new card adds nothing");
    assert_eq!(steps[0].timing, Timing::Immediately {});
    assert_eq!(
        steps[1].timing,
        Timing::Delay {
            delay: "PT90M".into()
        }
    );
    let at = Utc.with_ymd_and_hms(2030, 6, 1, 7, 30, 0).unwrap();
    assert_eq!(
        steps[2].timing,
        Timing::OnDate { at },
        "09:30 in Paris in June is 07:30 UTC"
    );
    let mut back = DraftStep::default();
    back.set_timing(&steps[1].timing, chrono_tz::UTC);
    assert_eq!(
        (back.after_n.as_str(), back.after_unit.as_str()),
        ("90", "minutes")
    );
    back.set_timing(
        &Timing::Delay {
            delay: "P1DT12H".into(),
        },
        chrono_tz::UTC,
    );
    assert_eq!(
        (back.after_n.as_str(), back.after_unit.as_str()),
        ("36", "hours")
    );
    back.set_timing(
        &Timing::Delay {
            delay: "P14D".into(),
        },
        chrono_tz::UTC,
    );
    assert_eq!(
        (back.after_n.as_str(), back.after_unit.as_str()),
        ("2", "weeks")
    );
}

#[test]
fn a_bad_wait_is_an_error_on_its_card_and_api_errors_find_their_card() {
    let mut pairs = vec![("name", "N"), ("sender", "a@b.co")];
    pairs.extend(step("", "One", "immediately", "", "days", ""));
    pairs.extend(step("", "", "after", "", "days", ""));
    pairs.extend(step("", "Three", "after", "soon", "days", ""));
    let e = Draft::from_form(&form(&pairs)).to_create().err().unwrap();
    assert!(
        e.fields["step:2"].contains("\"soon\" is not a whole number"),
        "{e:?}"
    );
    // The request's step 1 is card 2 (card 1 is an empty new one, left out).
    let e = Errors::from_api(
        &ApiError::invalid("steps[1].timing.delay", "too long"),
        &[0, 2],
    );
    assert_eq!(e.fields.get("step:2").map(String::as_str), Some("too long"));
    let e = Errors::from_api(&ApiError::invalid("send_window.start", "bad"), &[]);
    assert!(e.fields.contains_key("send_window"));
    let e = Errors::from_api(&ApiError::Conflict("changed".into()), &[]);
    assert_eq!(e.general, ["changed"]);
}

#[test]
fn cards_move_and_new_ones_are_removed_without_saving() {
    let mut d = Draft::blank();
    d.steps[0].subject = "A".into();
    assert!(d.rearrange("add"));
    d.steps[1].subject = "B".into();
    assert!(d.rearrange("up:1"));
    assert_eq!(d.steps[0].subject, "B");
    assert!(d.rearrange("down:0"));
    assert_eq!(d.steps[0].subject, "A");
    assert!(!d.rearrange("up:0") && !d.rearrange("down:1") && !d.rearrange("rm:1"));
    assert!(d.rearrange("remove:1"));
    assert_eq!(d.steps.len(), 1);
    d.steps[0].id = Uuid::new_v4().to_string();
    assert!(
        !d.rearrange("remove:0"),
        "a saved step is deleted by its checkbox"
    );
    assert!(d.rearrange("add_trigger"));
    assert_eq!(d.triggers.len(), 2);
}

#[test]
fn triggers_and_the_window_read_as_rows_and_days() {
    let mut pairs = vec![
        ("name", "N"),
        ("sender", "a@b.co"),
        ("window_day", "mon"),
        ("window_day", "fri"),
        ("window_start", "09:00"),
        ("window_end", "17:30"),
        ("trigger_kind", "tag_applied"),
        ("trigger_value", "vip"),
        ("trigger_kind", "lead_score_level"),
        ("trigger_value", "50"),
        ("trigger_kind", "list_added"),
        ("trigger_value", ""),
    ];
    pairs.extend(step("", "One", "immediately", "", "days", ""));
    let built = Draft::from_form(&form(&pairs)).to_create().unwrap().body;
    let w = built.send_window.unwrap();
    assert_eq!(
        (w.days, w.start, w.end),
        (
            vec!["mon".into(), "fri".into()],
            "09:00".into(),
            "17:30".into()
        )
    );
    assert_eq!(
        built.triggers,
        vec![
            TriggerSpec::TagApplied { tag: "vip".into() },
            TriggerSpec::LeadScore {
                min_score: 50,
                mode: ScoreMode::Level
            },
        ],
        "an empty row adds nothing"
    );
}

#[test]
fn limit_rows_and_ticked_mailboxes_become_the_api_body() {
    let mailbox = Uuid::new_v4().to_string();
    let mut pairs = vec![
        ("name", "N"),
        ("sender", "a@b.co"),
        ("mailbox_id", mailbox.as_str()),
        ("limit_max", "100"),
        ("limit_per", "P1D"),
        ("limit_max", ""),
        ("limit_per", "PT1H"),
    ];
    pairs.extend(step("", "One", "immediately", "", "days", ""));
    let built = Draft::from_form(&form(&pairs)).to_edit().unwrap().body;
    assert_eq!(
        built.limits,
        Some(vec![pulse_shared::limits::Limit {
            max: 100,
            per: "P1D".into()
        }]),
        "an empty row adds nothing"
    );
    let sender = built.sender.unwrap();
    assert_eq!(sender.from, None, "ticked mailboxes win over the address");
    assert_eq!(sender.mailbox_ids.map(|m| m.len()), Some(1));
    pairs.push(("limit_max", "lots"));
    pairs.push(("limit_per", "P1D"));
    let e = Draft::from_form(&form(&pairs)).to_create().err().unwrap();
    assert!(e.fields["limits"].contains("\"lots\""), "{e:?}");
    let mut d = Draft::blank();
    assert!(d.rearrange("add_limit"));
    assert_eq!(d.limits.len(), 1);
}
