//! Text rendering of traces: one indented tree per trace with a small waterfall, so a person can
//! see at a glance that A → B → C became one connected trace with the right kinds and services.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::span::{Kind, Span};

/// Columns of the waterfall bar.
const BAR_WIDTH: usize = 24;

/// Groups spans by trace id, traces ordered by their earliest timestamp.
pub fn group_by_trace(spans: &[Span]) -> Vec<(String, Vec<Span>)> {
    let mut traces: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for span in spans {
        traces
            .entry(span.trace_id.clone())
            .or_default()
            .push(span.clone());
    }
    let mut traces: Vec<(String, Vec<Span>)> = traces.into_iter().collect();
    traces.sort_by_key(|(_, spans)| spans.iter().filter_map(|s| s.timestamp).min());
    traces
}

/// Renders every trace in `spans`.
pub fn render_tree(spans: &[Span]) -> String {
    let mut out = String::new();
    for (trace_id, spans) in group_by_trace(spans) {
        render_trace(&mut out, &trace_id, &spans);
    }
    out
}

fn render_trace(out: &mut String, trace_id: &str, spans: &[Span]) {
    let start = spans.iter().filter_map(|s| s.timestamp).min().unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|s| Some(s.timestamp?.saturating_add(s.duration.unwrap_or(0))))
        .max()
        .unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let _ = writeln!(
        out,
        "trace {trace_id}  {} span{}, {}",
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        micros(total)
    );

    let children = parents(spans);
    let mut roots: Vec<usize> = (0..spans.len())
        .filter(|i| !children.values().any(|kids| kids.contains(i)))
        .collect();
    roots.sort_by_key(|&i| spans[i].timestamp);

    let mut printed = vec![false; spans.len()];
    for root in roots {
        render_span(out, spans, root, &children, 0, start, total, &mut printed);
    }
    // Spans caught in a parent cycle were never reached from a root: show them rather than lose them.
    for i in 0..spans.len() {
        if !printed[i] {
            render_span(out, spans, i, &children, 0, start, total, &mut printed);
        }
    }
}

/// Each span's children, by index into `spans`.
///
/// A shared span pair (Zipkin's `shared`, Envoy's default `shared_span_context`: the server
/// reuses its client's span id) is two spans with one id: the SERVER half is shown as the child
/// of the CLIENT half, and spans whose parent is that id hang under the SERVER half, the side
/// that made them. Indices rather than ids keep both halves of a pair on screen.
fn parents(spans: &[Span]) -> HashMap<usize, Vec<usize>> {
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, span) in spans.iter().enumerate() {
        by_id.entry(span.id.as_str()).or_default().push(i);
    }
    let is_shared_server =
        |i: usize| spans[i].shared == Some(true) || spans[i].kind == Some(Kind::Server);
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, span) in spans.iter().enumerate() {
        let same_id = &by_id[span.id.as_str()];
        let pair_client = same_id
            .iter()
            .copied()
            .find(|&j| j != i && spans[j].kind == Some(Kind::Client));
        let parent = match pair_client {
            Some(client) if same_id.len() == 2 && is_shared_server(i) => Some(client),
            _ => span
                .parent_id
                .as_deref()
                .filter(|p| *p != span.id)
                .and_then(|p| by_id.get(p))
                .and_then(|candidates| {
                    // Of a shared pair, the SERVER half is the parent of what follows it.
                    candidates
                        .iter()
                        .copied()
                        .find(|&j| spans[j].kind == Some(Kind::Server))
                        .or_else(|| candidates.first().copied())
                }),
        };
        if let Some(parent) = parent {
            children.entry(parent).or_default().push(i);
        }
    }
    for kids in children.values_mut() {
        kids.sort_by_key(|&k| (spans[k].timestamp, spans[k].kind.map(|k| k.as_str())));
    }
    children
}

#[allow(clippy::too_many_arguments)]
fn render_span(
    out: &mut String,
    spans: &[Span],
    i: usize,
    children: &HashMap<usize, Vec<usize>>,
    depth: usize,
    start: u64,
    total: u64,
    printed: &mut [bool],
) {
    if std::mem::replace(&mut printed[i], true) {
        return;
    }
    let span = &spans[i];
    let offset = span.timestamp.map(|t| t.saturating_sub(start));
    let duration = span.duration.unwrap_or(0);
    let bar = bar(offset.unwrap_or(0), duration, total);
    let kind = span.kind.map(|k| k.as_str()).unwrap_or("LOCAL");
    let name = printable(span.name.as_deref().unwrap_or("-"));
    let service = if span.service().is_empty() {
        "?".into()
    } else {
        printable(span.service())
    };
    let mut line = format!(
        "  {bar} {:>10} {:>10}  {}{kind} {service} {name}",
        offset.map(micros).unwrap_or_else(|| "?".into()),
        micros(duration),
        "  ".repeat(depth),
    );
    let status = span
        .tag("http.status_code")
        .or_else(|| span.tag("http.response.status_code"));
    if let Some(status) = status {
        let _ = write!(line, " [{}]", printable(status));
    }
    if let Some(error) = span.tag("error") {
        let _ = write!(line, " error={error:?}");
    }
    let _ = writeln!(out, "{line}");
    if let Some(kids) = children.get(&i) {
        for &child in kids {
            render_span(
                out,
                spans,
                child,
                children,
                depth + 1,
                start,
                total,
                printed,
            );
        }
    }
}

/// Text from a sender, made safe for a terminal: control characters (an escape sequence could
/// move the cursor, recolour or retitle the terminal) are shown escaped, as `{:?}` would.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

fn bar(offset: u64, duration: u64, total: u64) -> String {
    let scale = |v: u64| ((v as u128 * BAR_WIDTH as u128) / total as u128) as usize;
    let from = scale(offset).min(BAR_WIDTH - 1);
    let len = scale(duration).clamp(1, BAR_WIDTH - from);
    format!(
        "|{}{}{}|",
        " ".repeat(from),
        "=".repeat(len),
        " ".repeat(BAR_WIDTH - from - len)
    )
}

fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.3}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.3}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{Endpoint, Kind};

    fn span(id: &str, parent: Option<&str>, kind: Kind, service: &str, ts: u64, d: u64) -> Span {
        Span {
            trace_id: "463ac35c9f6413ad48485a3953bb6124".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            kind: Some(kind),
            name: Some("GET".into()),
            timestamp: Some(ts),
            duration: Some(d),
            local_endpoint: Some(Endpoint {
                service_name: Some(service.into()),
                ..Endpoint::default()
            }),
            ..Span::default()
        }
    }

    #[test]
    fn renders_a_connected_tree_indented_by_depth() {
        let t0 = 1_700_000_000_000_000;
        // Given out of order, as collectors receive them.
        let spans = vec![
            span(
                "000000000000000c",
                Some("000000000000000b"),
                Kind::Server,
                "b.demo",
                t0 + 200,
                500,
            ),
            span("000000000000000a", None, Kind::Server, "a.demo", t0, 1_000),
            span(
                "000000000000000b",
                Some("000000000000000a"),
                Kind::Client,
                "a.demo",
                t0 + 100,
                800,
            ),
        ];
        let text = render_tree(&spans);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("trace 463ac35c9f6413ad48485a3953bb6124  3 spans, 1.000ms"),
            "{text}"
        );
        assert!(lines[1].contains("  SERVER a.demo GET"), "{text}");
        assert!(lines[2].contains("    CLIENT a.demo GET"), "{text}");
        assert!(lines[3].contains("      SERVER b.demo GET"), "{text}");
        assert!(lines[3].contains("500us"), "{text}");
    }

    /// Envoy's default: the server half of a hop reuses the client's span id (`shared`).
    #[test]
    fn shows_both_halves_of_a_shared_span_pair() {
        let t0 = 1_700_000_000_000_000;
        let mut server = span(
            "000000000000000b",
            Some("000000000000000a"),
            Kind::Server,
            "b.demo",
            t0 + 150,
            600,
        );
        server.shared = Some(true);
        let spans = vec![
            span("000000000000000a", None, Kind::Server, "a.demo", t0, 1_000),
            server,
            span(
                "000000000000000b",
                Some("000000000000000a"),
                Kind::Client,
                "a.demo",
                t0 + 100,
                800,
            ),
            span(
                "000000000000000c",
                Some("000000000000000b"),
                Kind::Client,
                "b.demo",
                t0 + 200,
                300,
            ),
        ];
        let text = render_tree(&spans);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].contains("  SERVER a.demo"), "{text}");
        assert!(lines[2].contains("    CLIENT a.demo"), "{text}");
        assert!(lines[3].contains("      SERVER b.demo"), "{text}");
        assert!(lines[4].contains("        CLIENT b.demo"), "{text}");
    }

    #[test]
    fn terminal_escapes_in_sender_text_are_neutralised() {
        let mut s = span(
            "000000000000000a",
            None,
            Kind::Server,
            "a\u{1b}]0;pwned\u{7}",
            1,
            1,
        );
        s.name = Some("get \u{1b}[2J\u{1b}[31mred".into());
        s.tags.insert("http.status_code".into(), "200\r".into());
        let text = render_tree(&[s]);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("get \\u{1b}[2J\\u{1b}[31mred"), "{text}");
        assert!(text.contains("a\\u{1b}]0;pwned\\u{7}"), "{text}");
    }

    #[test]
    fn survives_orphans_and_cycles() {
        let t0 = 1_700_000_000_000_000;
        let spans = vec![
            span(
                "000000000000000a",
                Some("000000000000000b"),
                Kind::Server,
                "a",
                t0,
                10,
            ),
            span(
                "000000000000000b",
                Some("000000000000000a"),
                Kind::Client,
                "b",
                t0,
                10,
            ),
            span(
                "000000000000000c",
                Some("00000000000000ff"),
                Kind::Server,
                "c",
                t0,
                0,
            ),
        ];
        let text = render_tree(&spans);
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.contains("SERVER c"), "{text}");
    }
}
