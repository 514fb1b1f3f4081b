//! Limits a MeshConfig text must keep before it is parsed for real.
//!
//! A MeshConfig is a few hundred bytes and five levels deep, but it arrives from a file anyone
//! with access to the ConfigMap can write and from a config server over the network, and the
//! parse builds a tree whose cost is not bounded by the text: YAML aliases replay a node each
//! time they are named ("billion laughs": a few hundred bytes that expand to 10^9 values), and
//! every level of nesting is a level of recursion in the parser and in the schema walk.
//!
//! So the text is measured first, in this order: its length (free); for YAML, a scan of its
//! indicators that refuses nesting far past [`MAX_DEPTH`] without the parser (see `scan`); then
//! one pass of the same parser that builds nothing and stops at the first value past
//! [`MAX_DEPTH`], [`MAX_VALUES`] or [`VALUES_PER_BYTE`] (aliases expanded, as the real parse
//! would see them). Only a text within every bound is handed to the parse that builds the tree.
//! Each refusal is a [`ConfigError::Bounds`] naming the limit, so a user sees which one, not a
//! parser's recursion error or an out-of-memory kill.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::{Bound, ConfigError};

mod scan;
use scan::yaml_nesting_estimate;

/// The largest document read or parsed. Two hundred times the largest real one, and the same
/// as the config reader's body limit, so a document the config server can serve is one the
/// sidecar can read.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The deepest nesting of mappings and lists. The schema is five levels deep
/// (`spec.observability.tracing.propagation[0]`) and Kubernetes' `managedFields` mirror it a few
/// levels lower; 32 leaves room for both and stays far below the parsers' own recursion limits
/// (128), which would report a syntax error instead of a bound.
pub const MAX_DEPTH: usize = 32;

/// The most values (scalars, mappings and lists, each alias counted as what it expands to) in
/// one document. A full MeshConfig has under a hundred; a hundred thousand leaves room for
/// exclusion lists of every port, and is counted in milliseconds.
pub const MAX_VALUES: usize = 100_000;

/// Values allowed per byte of text (plus [`VALUES_SLACK`]), below [`MAX_VALUES`]. Without
/// aliases a value costs at least half a byte (`{a}` is three values in three bytes; an
/// implicit null always comes with a `:`, `-` or `?`), so only alias expansion gets past this:
/// reusing a port list is fine, multiplying the document is not. It also makes a small
/// "billion laughs" fail on this bound, named as such, before the YAML parser's own repetition
/// limit (a hundred alias replays per event) reports it as a syntax error.
pub const VALUES_PER_BYTE: usize = 4;
/// What any document may expand to, however short.
pub const VALUES_SLACK: usize = 256;

/// Checks `text` against every limit before it is parsed; a text the measuring pass cannot read
/// at all passes, so that the real parse reports the syntax error with its usual message.
pub fn check(text: &str) -> Result<(), ConfigError> {
    check_with(text, Limits::default())
}

/// The limits of one check; [`Default`] gives the documented constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) bytes: usize,
    pub(crate) depth: usize,
    pub(crate) values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bytes: MAX_DOCUMENT_BYTES,
            depth: MAX_DEPTH,
            values: MAX_VALUES,
        }
    }
}

pub(crate) fn check_with(text: &str, limits: Limits) -> Result<(), ConfigError> {
    if text.len() > limits.bytes {
        return Err(ConfigError::Bounds(Bound::Size {
            limit: limits.bytes,
        }));
    }
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    let limits = Limits {
        values: limits
            .values
            .min(VALUES_PER_BYTE * trimmed.len() + VALUES_SLACK),
        ..limits
    };
    // The same choice of syntax as the parse: JSON when it reads as JSON, YAML otherwise.
    if trimmed.starts_with('{') {
        let state = State::new(limits);
        let mut json = serde_json::Deserializer::from_str(trimmed);
        let walked = Walk::new(&state)
            .deserialize(&mut json)
            .and_then(|()| json.end());
        match (walked, state.exceeded.get()) {
            (_, Some(bound)) => return Err(ConfigError::Bounds(bound)),
            (Ok(()), None) => return Ok(()),
            (Err(_), None) => {}
        }
    }
    // The YAML parser reads the whole document into events before the walk sees the first,
    // at some microseconds a level: a megabyte of `[` would cost seconds before it is refused.
    if yaml_nesting_estimate(trimmed, SCAN_DEPTH_FACTOR * limits.depth)
        > SCAN_DEPTH_FACTOR * limits.depth
    {
        return Err(ConfigError::Bounds(Bound::Depth {
            limit: limits.depth,
        }));
    }
    let state = State::new(limits);
    let _ = Walk::new(&state).deserialize(serde_yaml::Deserializer::from_str(trimmed));
    match state.exceeded.get() {
        Some(bound) => Err(ConfigError::Bounds(bound)),
        None => Ok(()),
    }
}

/// How far the estimate of [`scan::yaml_nesting_estimate`] may go past the depth limit before the
/// text is refused without the parser. The estimate counts a level too many now and then (a
/// compact `- a:` or a continuation line); four times the limit is nesting no real document
/// has, and anything between is left to the walk, which counts exactly.
const SCAN_DEPTH_FACTOR: usize = 4;

/// What one measuring pass has seen so far.
struct State {
    limits: Limits,
    values: Cell<usize>,
    /// Set when a limit stopped the pass; any other error is the parser's.
    exceeded: Cell<Option<Bound>>,
}

impl State {
    fn new(limits: Limits) -> Self {
        State {
            limits,
            values: Cell::new(0),
            exceeded: Cell::new(None),
        }
    }

    fn exceed<E: de::Error>(&self, bound: Bound) -> E {
        self.exceeded.set(Some(bound));
        E::custom(bound)
    }

    /// Counts one value.
    fn value<E: de::Error>(&self) -> Result<(), E> {
        let n = self.values.get() + 1;
        if n > self.limits.values {
            return Err(self.exceed(Bound::Values {
                limit: self.limits.values,
            }));
        }
        self.values.set(n);
        Ok(())
    }
}

/// Visits one value and everything under it, keeping nothing.
#[derive(Clone, Copy)]
struct Walk<'s> {
    state: &'s State,
    /// Mappings and lists around this value.
    depth: usize,
}

impl<'s> Walk<'s> {
    fn new(state: &'s State) -> Self {
        Walk { state, depth: 0 }
    }

    /// The walk one level down, or the depth bound.
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= self.state.limits.depth {
            return Err(self.state.exceed(Bound::Depth {
                limit: self.state.limits.depth,
            }));
        }
        Ok(Walk {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.state.value()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.state.value()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.state.value()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.state.value()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.state.value()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.state.value()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.state.value()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.state.value()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.state.value()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.state.value()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.state.value()?;
        let inner = self.nested()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.state.value()?;
        let inner = self.nested()?;
        while map.next_key_seed(inner)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }

    /// A YAML tag (`!Tag value`): the tagged value counts like any other.
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(text: &str, limits: Limits) -> Option<Bound> {
        match check_with(text, limits) {
            Ok(()) => None,
            Err(ConfigError::Bounds(b)) => Some(b),
            Err(e) => panic!("not a bound: {e}"),
        }
    }

    fn nested_yaml(levels: usize) -> String {
        let mut text = String::new();
        for i in 0..levels {
            text.push_str(&"  ".repeat(i));
            text.push_str("a:\n");
        }
        text
    }

    /// `levels` of aliases, each naming the previous one `fan` times: fan^levels values.
    fn laughs(levels: usize, fan: usize) -> String {
        let mut text = String::from("l0: &l0 [lol]\n");
        for i in 1..=levels {
            let items = vec![format!("*l{}", i - 1); fan].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{items}]\n"));
        }
        text
    }

    #[test]
    fn real_documents_pass() {
        let doc = "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh-config, namespace: mesh-system}\nspec:\n  observability:\n    tracing: {enable: true, address: a, propagation: [b3multi]}\n";
        assert_eq!(check(doc), Ok(()));
        assert_eq!(
            check(r#"{"spec":{"traffic":{"opaquePorts":[1,2,3]}}}"#),
            Ok(())
        );
        // A few anchors and aliases are fine: only their expansion is bounded.
        assert_eq!(check("a: &x [1, 2]\nb: *x\n"), Ok(()));
    }

    #[test]
    fn unreadable_text_is_left_to_the_parse() {
        assert_eq!(check("a: [b"), Ok(()));
        assert_eq!(check("{\"a\": "), Ok(()));
        assert_eq!(check(""), Ok(()));
    }

    #[test]
    fn size_is_checked_first() {
        let limits = Limits {
            bytes: 10,
            ..Limits::default()
        };
        assert_eq!(bound("a: 1234567", limits), None);
        assert_eq!(
            bound("a: 12345678", limits),
            Some(Bound::Size { limit: 10 })
        );
        // Not even read: an unparseable text over the limit is refused on its size.
        assert_eq!(
            bound("[[[[[[[[[[[[", limits),
            Some(Bound::Size { limit: 10 })
        );
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        assert_eq!(
            check(&big),
            Err(ConfigError::Bounds(Bound::Size {
                limit: MAX_DOCUMENT_BYTES
            }))
        );
    }

    #[test]
    fn depth_is_bounded_in_yaml_and_json() {
        assert_eq!(check(&nested_yaml(MAX_DEPTH)), Ok(()));
        let deep = Some(Bound::Depth { limit: MAX_DEPTH });
        assert_eq!(bound(&nested_yaml(MAX_DEPTH + 1), Limits::default()), deep);
        let json = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
        assert_eq!(check(&json(MAX_DEPTH)), Ok(()));
        assert_eq!(bound(&json(MAX_DEPTH + 1), Limits::default()), deep);
        // Flow style, and far deeper than the parsers' own recursion limits.
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(bound(&flow, Limits::default()), deep);
        let unclosed = "{\"a\":[".repeat(50_000);
        assert_eq!(bound(&unclosed, Limits::default()), deep);
    }

    #[test]
    fn deep_yaml_is_refused_without_the_parser() {
        let deep = Err(ConfigError::Bounds(Bound::Depth { limit: MAX_DEPTH }));
        // A megabyte of nesting, refused in far less than the parser's seconds.
        let flow = format!("a: {}", "[".repeat(MAX_DOCUMENT_BYTES - 3));
        let started = std::time::Instant::now();
        assert_eq!(check(&flow), deep);
        let compact = "- ".repeat(MAX_DOCUMENT_BYTES / 2 - 1);
        assert_eq!(check(&compact), deep);
        let keys = "? ".repeat(MAX_DOCUMENT_BYTES / 2 - 1);
        assert_eq!(check(&keys), deep);
        let tagged = "- !t &a ".repeat(MAX_DOCUMENT_BYTES / 8);
        assert_eq!(check(&tagged), deep);
        // Closing brackets inside strings do not hide real nesting.
        let strings = "[\"]]]\", {\"k\":\"}}]\", \"v\": ".repeat(200);
        assert_eq!(check(&strings), deep);
        assert!(yaml_nesting_estimate(&strings, usize::MAX) >= 400);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn alias_expansion_is_bounded() {
        // 10^9 values in under 600 bytes: refused at four values per byte.
        let text = laughs(9, 10);
        assert!(text.len() < 600, "{}", text.len());
        let limit = VALUES_PER_BYTE * text.trim().len() + VALUES_SLACK;
        assert_eq!(
            check(&text),
            Err(ConfigError::Bounds(Bound::Values { limit }))
        );
        // And through the parse, with the same error.
        assert_eq!(
            crate::parse(&text),
            Err(ConfigError::Bounds(Bound::Values { limit }))
        );
        // A long document that expands a long list many times hits the absolute bound.
        let long = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["1"; 20_000].join(","),
            ["*a"; 10].join(",")
        );
        assert_eq!(
            check(&long),
            Err(ConfigError::Bounds(Bound::Values { limit: MAX_VALUES }))
        );
        let small = Limits {
            values: 50,
            ..Limits::default()
        };
        // 1 + 2 + 4 + 8 = 15 list items, 4 lists, 1 root mapping, 5 keys: 25 values.
        assert_eq!(bound(&laughs(3, 2), small), None);
        assert_eq!(
            bound(&laughs(5, 2), small),
            Some(Bound::Values { limit: 50 })
        );
    }

    #[test]
    fn the_error_names_the_limit() {
        let msg = |b: Bound| ConfigError::Bounds(b).to_string();
        assert_eq!(
            msg(Bound::Size { limit: 1 << 20 }),
            "the document is refused before parsing: larger than the limit of 1048576 bytes"
        );
        assert_eq!(
            msg(Bound::Depth { limit: 32 }),
            "the document is refused before parsing: nested deeper than the limit of 32 levels"
        );
        assert_eq!(
            msg(Bound::Values { limit: 2_436 }),
            "the document is refused before parsing: more than the limit of 2436 values \
             (YAML aliases expanded; the limit is 4 per byte of the document, at most 100000)"
        );
    }
}
