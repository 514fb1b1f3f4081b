//! Text rendering of traces: one indented tree per trace with a small waterfall, so a person can
//! see at a glance that A → B → C became one connected trace with the right kinds and services.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;

use crate::span::Span;

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

    let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&Span>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        match span.parent_id.as_deref() {
            Some(parent) if parent != span.id && ids.contains(parent) => {
                children.entry(parent).or_default().push(span)
            }
            _ => roots.push(span),
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.timestamp, s.kind.map(|k| k.as_str())));
    }
    roots.sort_by_key(|s| s.timestamp);

    let mut printed = HashSet::new();
    for root in roots {
        render_span(out, root, &children, 0, start, total, &mut printed);
    }
    // Spans caught in a parent cycle were never reached from a root: show them rather than lose them.
    for span in spans {
        if !printed.contains(span.id.as_str()) {
            render_span(out, span, &children, 0, start, total, &mut printed);
        }
    }
}

fn render_span<'a>(
    out: &mut String,
    span: &'a Span,
    children: &HashMap<&str, Vec<&'a Span>>,
    depth: usize,
    start: u64,
    total: u64,
    printed: &mut HashSet<&'a str>,
) {
    if !printed.insert(span.id.as_str()) {
        return;
    }
    let offset = span.timestamp.map(|t| t.saturating_sub(start));
    let duration = span.duration.unwrap_or(0);
    let bar = bar(offset.unwrap_or(0), duration, total);
    let kind = span.kind.map(|k| k.as_str()).unwrap_or("LOCAL");
    let name = span.name.as_deref().unwrap_or("-");
    let mut line = format!(
        "  {bar} {:>10} {:>10}  {}{kind} {} {name}",
        offset.map(micros).unwrap_or_else(|| "?".into()),
        micros(duration),
        "  ".repeat(depth),
        if span.service().is_empty() {
            "?"
        } else {
            span.service()
        },
    );
    let status = span
        .tag("http.status_code")
        .or_else(|| span.tag("http.response.status_code"));
    if let Some(status) = status {
        let _ = write!(line, " [{status}]");
    }
    if let Some(error) = span.tag("error") {
        let _ = write!(line, " error={error:?}");
    }
    let _ = writeln!(out, "{line}");
    if let Some(kids) = children.get(span.id.as_str()) {
        for child in kids {
            render_span(out, child, children, depth + 1, start, total, printed);
        }
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
