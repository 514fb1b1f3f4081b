//! A scan of YAML indicators that bounds how deep a text nests without the YAML parser, which
//! reads the whole document into events first (at some microseconds a level).

/// An estimate (never below, sometimes above) of how deep the YAML `text` nests, by a scan of
/// its indicators: indentation, compact `- `/`? ` entries, and flow brackets outside quotes
/// and comments. Stops counting once past `stop_above`. Linear, without allocation beyond the
/// indentation stack.
pub(super) fn yaml_nesting_estimate(text: &str, stop_above: usize) -> usize {
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    // Columns of the open block collections; a line pops those at or right of its indentation.
    let mut block: Vec<usize> = Vec::new();
    // Inside a `|`/`>` scalar: lines indented deeper than this are its text.
    let mut block_scalar: Option<usize> = None;
    let mut deepest = 0;
    for line in text.split('\n') {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let blank = bytes[indent..].iter().all(|b| b.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        if quote.is_none() && flow == 0 {
            if blank || bytes[indent] == b'#' {
                continue;
            }
            while block.last().is_some_and(|&col| col >= indent) {
                block.pop();
            }
            block.push(indent);
        }
        let mut node_start = quote.is_none();
        // Right after a quoted scalar or a flow collection, where `"a":1` makes `:` an indicator.
        let mut after_json_key = false;
        let mut i = indent;
        while i < bytes.len() {
            let c = bytes[i];
            let next = bytes.get(i + 1).copied();
            let next_is_space = matches!(next, None | Some(b' ' | b'\t' | b'\r'));
            if let Some(q) = quote {
                match c {
                    b'\\' if q == b'"' => i += 1,
                    b'\'' if q == b'\'' && next == Some(b'\'') => i += 1,
                    _ if c == q => {
                        quote = None;
                        node_start = false;
                        after_json_key = true;
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            let json_key = std::mem::take(&mut after_json_key);
            match c {
                b' ' | b'\t' | b'\r' => after_json_key = json_key,
                b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t') => break,
                b'"' | b'\'' if node_start => quote = Some(c),
                b'[' | b'{' if node_start || flow > 0 => {
                    flow += 1;
                    node_start = true;
                    deepest = deepest.max(block.len() + flow);
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    node_start = false;
                    after_json_key = true;
                }
                b',' if flow > 0 => node_start = true,
                b'-' | b'?' if node_start && flow == 0 && next_is_space => block.push(i + 1),
                b':' if next_is_space
                    || (flow > 0
                        && (json_key
                            || matches!(next, Some(b',' | b'[' | b']' | b'{' | b'}')))) =>
                {
                    node_start = true
                }
                // An anchor or a tag: the node starts after it.
                b'&' | b'!' if node_start => {
                    while i + 1 < bytes.len() && !matches!(bytes[i + 1], b' ' | b'\t') {
                        i += 1;
                    }
                }
                b'|' | b'>' if node_start && flow == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                _ => node_start = false,
            }
            i += 1;
            if flow > stop_above {
                return flow;
            }
        }
        deepest = deepest.max(block.len() + flow);
        if deepest > stop_above {
            return deepest;
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nesting_estimate_is_never_below_the_real_depth() {
        let cases = [
            ("a: 1\n", 1),
            ("a:\n  b:\n    c: [1, {d: e}]\n", 5),
            ("- a: 1\n  b: [x]\n- - - y\n", 4),
            ("a: {b: [c, [d]], e: f}\n", 4),
            ("{\"a\": {\"b\": [1]}}", 3),
            ("a: &x [1]\nb: !!seq [[2]]\n", 3),
            ("? [a]\n: b\n", 2),
        ];
        for (text, depth) in cases {
            let estimate = yaml_nesting_estimate(text, usize::MAX);
            assert!(estimate >= depth, "{text:?}: {estimate} < {depth}");
            assert!(
                estimate <= depth + 2,
                "{text:?}: {estimate} far above {depth}"
            );
        }
        // Brackets that are text, not structure.
        for text in [
            "a: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"\n",
            "a: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[''['\n",
            "a: x[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            "a: 1 # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            "a: |\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nb: 1\n",
        ] {
            assert!(yaml_nesting_estimate(text, usize::MAX) <= 2, "{text:?}");
            assert_eq!(crate::bounded::check(text), Ok(()), "{text:?}");
        }
    }
}
