//! YAML 1.1's booleans in a YAML 1.2 world. serde_yaml reads and writes YAML 1.2, where `off`,
//! `on`, `yes`, `no`, `y` and `n` are plain strings; `kubectl` and the API server read YAML 1.1,
//! where they are booleans. So the stitching mode `off` must be quoted in every YAML this crate
//! writes, and a bare one in a file that `mesh config validate` checks would pass here and then
//! be refused by `kubectl apply` (`false` is no stitching mode).

use crate::FieldError;

/// The words YAML 1.1 reads as booleans (besides `true` and `false`, which YAML 1.2 reads so
/// too).
const BOOLEAN_WORDS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Quotes every plain scalar that is a YAML 1.1 boolean word, as a list item (`- off`) or a
/// mapping value (`key: off`), in serde_yaml's block output. Real booleans are written
/// `true`/`false` and stay as they are.
pub fn quote_booleans(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    for line in yaml.lines() {
        let value_at = line
            .rfind(": ")
            .map(|i| i + 2)
            .or_else(|| {
                let indent = line.len() - line.trim_start().len();
                line[indent..].starts_with("- ").then_some(indent + 2)
            })
            .unwrap_or(line.len());
        let (head, value) = line.split_at(value_at);
        if BOOLEAN_WORDS.contains(&value) {
            out.push_str(head);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Fields whose values YAML 1.1 could misread, by key, with the dotted path errors name.
const WATCHED: &[(&str, &str)] = &[("stitching", "spec.observability.tracing.stitching")];

/// Bare YAML 1.1 boolean words as values of the watched keys, block (`stitching: off`) or flow
/// style (`{stitching: off}`). A line-level look, which is enough for the one enum that has
/// such a value; quoted values and comments are left alone.
pub fn bare_booleans(yaml: &str) -> Vec<FieldError> {
    let mut found = Vec::new();
    for line in yaml.lines().map(without_comment) {
        for (key, path) in WATCHED {
            let pattern = format!("{key}:");
            let mut from = 0;
            while let Some(at) = line[from..].find(&pattern).map(|i| i + from) {
                from = at + pattern.len();
                let starts_key = line[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
                let value = line[from..]
                    .split([',', '}', '#'])
                    .next()
                    .unwrap_or_default()
                    .trim();
                if starts_key && BOOLEAN_WORDS.contains(&value) {
                    found.push(FieldError::new(
                        *path,
                        format!(
                            "write '{value}' in quotes: kubectl and the API server read a bare \
                             {value} as a boolean (YAML 1.1)"
                        ),
                    ));
                }
            }
        }
    }
    found
}

/// The line up to a YAML comment: a `#` outside quotes, at the start or after a space.
fn without_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boolean_words_are_quoted() {
        assert_eq!(
            quote_booleans("a:\n- off\n- on-call\nb: no\nc: true\nd: 'yes'\ne: Offset\n"),
            "a:\n- 'off'\n- on-call\nb: 'no'\nc: true\nd: 'yes'\ne: Offset\n"
        );
    }

    #[test]
    fn bare_words_are_found_in_block_and_flow_style() {
        for text in [
            "      stitching: off\n",
            "      stitching: Off   # no stitching\n",
            "spec: {observability: {tracing: {stitching: off}}}\n",
            "tracing: {enable: true, stitching: no, port: 1}\n",
        ] {
            let found = bare_booleans(text);
            assert_eq!(found.len(), 1, "{text}");
            assert_eq!(found[0].path, "spec.observability.tracing.stitching");
        }
        for text in [
            "      stitching: 'off'\n",
            "      stitching: \"off\"\n",
            "      stitching: request-id\n",
            "      nostitching: off\n",
            "      # stitching: off\n",
        ] {
            assert!(bare_booleans(text).is_empty(), "{text}");
        }
    }
}
