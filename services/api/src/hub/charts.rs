//! Charts drawn on the server as inline SVG: they work without JavaScript and show in the
//! browser tests' screenshots. Each has a title and a description for screen readers, each bar
//! its own tooltip, a legend in words and its numbers in a table under it, so colour is never
//! the only way to read one. Pure functions from numbers to markup; the colours are classes in
//! `hub.css` (the Content-Security-Policy allows no inline style).

use maud::{Markup, html};

/// One series of a stacked bar chart: its name in the legend and its CSS class.
pub struct Series {
    pub name: &'static str,
    pub class: &'static str,
}

const W: f64 = 720.0;
const H: f64 = 180.0;
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// Bars over time, each stacked from `values[i]` (one number per series). `labels[i]` names
/// bucket `i` (shown under some bars and in every tooltip); `id` makes the ids unique on a page.
pub fn stacked_bars(
    id: &str,
    title: &str,
    labels: &[String],
    series: &[Series],
    values: &[Vec<i64>],
) -> Markup {
    let n = values.len().max(1) as f64;
    let max = values
        .iter()
        .map(|v| v.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot_w = W - LEFT;
    let plot_h = H - BOTTOM - TOP;
    let bar_w = plot_w / n;
    let y = |v: f64| TOP + plot_h - v / max * plot_h;
    let every = (values.len() / 6).max(1);
    let total: i64 = values.iter().flatten().sum();
    let desc = format!(
        "{} in all; the most in one bar is {}.",
        series
            .iter()
            .enumerate()
            .map(|(s, ser)| format!(
                "{} {}",
                values
                    .iter()
                    .map(|v| v.get(s).copied().unwrap_or(0))
                    .sum::<i64>(),
                ser.name
            ))
            .collect::<Vec<_>>()
            .join(", "),
        max as i64
    );
    html! {
        figure.chart data-chart=(id) data-total=(total) {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
                title id=(format!("{id}-t")) { (title) }
                desc id=(format!("{id}-d")) { (desc) }
                @for v in [max, (max / 2.0).round()] {
                    line.grid x1=(LEFT) x2=(W) y1=(y(v)) y2=(y(v)) {}
                    text.axis x=(LEFT - 4.0) y=(y(v) + 4.0) text-anchor="end" { (v as i64) }
                }
                line.axis-line x1=(LEFT) x2=(W) y1=(y(0.0)) y2=(y(0.0)) {}
                @for (i, bucket) in values.iter().enumerate() {
                    @let x = LEFT + i as f64 * bar_w;
                    g {
                        title { (labels.get(i).cloned().unwrap_or_default()) ": "
                            (series.iter().zip(bucket).map(|(s, v)| format!("{v} {}", s.name)).collect::<Vec<_>>().join(", ")) }
                        @for (class, low, high) in stack(series, bucket) {
                            rect class=(class) x=(format!("{:.1}", x + 0.5)) width=(format!("{:.1}", (bar_w - 1.0).max(1.0)))
                                y=(format!("{:.1}", y(high))) height=(format!("{:.1}", y(low) - y(high))) {}
                        }
                        // The whole column answers the pointer, even where it is empty.
                        rect.hit x=(format!("{x:.1}")) width=(format!("{bar_w:.1}")) y=(TOP) height=(plot_h) {}
                    }
                    @if i % every == 0 {
                        text.axis x=(format!("{:.1}", x + bar_w / 2.0)) y=(H - 6.0) text-anchor="middle" {
                            (labels.get(i).cloned().unwrap_or_default())
                        }
                    }
                }
            }
            figcaption {
                (title) ": "
                @for s in series { span.legend { svg.swatch viewBox="0 0 10 10" aria-hidden="true" { rect class=(s.class) width="10" height="10" {} } " " (s.name) } " " }
            }
            details {
                summary { "The numbers" }
                table.list {
                    thead { tr { th { "From" } @for s in series { th.num { (s.name) } } } }
                    tbody { @for (i, bucket) in values.iter().enumerate() {
                        @if bucket.iter().any(|v| *v > 0) {
                            tr { td { (labels.get(i).cloned().unwrap_or_default()) } @for v in bucket { td.num { (v) } } }
                        }
                    } }
                }
            }
        }
    }
}

/// The pieces of one stacked bar, bottom up: (class, from, to) in the values' units.
fn stack(series: &[Series], bucket: &[i64]) -> Vec<(&'static str, f64, f64)> {
    let mut base = 0.0;
    let mut pieces = Vec::new();
    for (s, v) in series.iter().zip(bucket) {
        if *v > 0 {
            let top = base + *v as f64;
            pieces.push((s.class, base, top));
            base = top;
        }
    }
    pieces
}

/// Horizontal bars, one per item, each with its name and its number written beside it.
pub fn bars(id: &str, title: &str, items: &[(String, i64)]) -> Markup {
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let row = 26.0;
    let label_w = 220.0;
    let h = row * items.len().max(1) as f64 + 4.0;
    let room = W - label_w - 60.0;
    html! {
        figure.chart data-chart=(id) {
            svg viewBox=(format!("0 0 {W} {h}")) role="img" aria-labelledby=(format!("{id}-t {id}-d")) {
                title id=(format!("{id}-t")) { (title) }
                desc id=(format!("{id}-d")) {
                    (items.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "))
                }
                @for (i, (name, v)) in items.iter().enumerate() {
                    @let top = 2.0 + i as f64 * row;
                    @let w = (*v as f64 / max * room).max(if *v > 0 { 2.0 } else { 0.0 });
                    g data-item=(name) data-value=(v) {
                        title { (name) ": " (v) }
                        text.axis x=(label_w - 8.0) y=(top + row / 2.0 + 4.0) text-anchor="end" { (clip(name, 34)) }
                        rect.bar x=(label_w) y=(top + 3.0) width=(format!("{w:.1}")) height=(row - 8.0) {}
                        text.value x=(format!("{:.1}", label_w + w + 6.0)) y=(top + row / 2.0 + 4.0) { (v) }
                    }
                }
            }
            figcaption { (title) }
        }
    }
}

/// `text` cut to `max` characters, with an ellipsis when it was longer.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacked_bar_is_as_tall_as_its_sum_and_says_its_numbers() {
        let series = [
            Series {
                name: "sent",
                class: "s-sent",
            },
            Series {
                name: "failed",
                class: "s-failed",
            },
        ];
        let svg = stacked_bars(
            "sends",
            "Sends",
            &["10:00".into(), "11:00".into()],
            &series,
            &[vec![3, 1], vec![0, 0]],
        )
        .into_string();
        assert!(
            svg.contains("3 sent, 1 failed in all; the most in one bar is 4."),
            "{svg}"
        );
        assert!(
            svg.contains("<title>10:00: 3 sent, 1 failed</title>"),
            "{svg}"
        );
        assert_eq!(
            svg.matches(r#"class="s-sent""#).count(),
            2,
            "one bar and its legend swatch"
        );
        assert!(svg.contains(r#"data-total="4""#));
        // The tallest bar fills the plot: 3 + 1 of a maximum 4.
        assert!(
            svg.contains(r#"height="112.5""#) && svg.contains(r#"height="37.5""#),
            "{svg}"
        );
    }

    #[test]
    fn bars_write_their_numbers() {
        let svg = bars(
            "f",
            "Funnel",
            &[
                ("Step 1".into(), 10),
                ("Step 2 — a very long subject line indeed".into(), 0),
            ],
        )
        .into_string();
        assert!(
            svg.contains(r#"data-item="Step 1" data-value="10""#),
            "{svg}"
        );
        assert!(svg.contains("Step 2 — a very long subject line…"), "{svg}");
    }
}
