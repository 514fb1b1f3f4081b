//! W3C `tracestate`: the vendors' list that travels beside `traceparent`, combined and cleaned
//! as the Trace Context spec says before it is sent on.
//!
//! Several `tracestate` headers are one list (RFC 9110 field combination, in arrival order).
//! A member that breaks the grammar is dropped on its own, so one vendor's garbage does not
//! cost the others their state. What the spec calls an invalid *list* drops the whole header:
//! more than [`MAX_MEMBERS`] members, or a key repeated (the W3C test suite expects both).
//! A list longer than [`MAX_LEN`] is cut by the spec's truncation rule. A header already
//! clean (the usual case: one header, no spaces) is kept as the same value, with no copy.

use http::HeaderValue;

/// The spec's limit: "There can be a maximum of 32 list-members in a list."
pub const MAX_MEMBERS: usize = 32;

/// The length a vendor "SHOULD propagate at least" (members and their commas, without
/// optional white space); past it the spec's truncation rule applies, which bounds what one
/// request can make every hop carry.
pub const MAX_LEN: usize = 512;

/// Members longer than this go first when the list must be cut (the spec's rule).
const LONG_MEMBER: usize = 128;

/// The combined, cleaned list of every `tracestate` value, in order; `None` when nothing valid
/// is left or the list as a whole is invalid.
pub(crate) fn combine<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Option<HeaderValue> {
    let mut values = values.into_iter();
    let first = values.next()?;
    let mut members: Vec<&[u8]> = Vec::new();
    // Whether the members, joined by commas, are byte for byte the first header: then that
    // header is sent on as it came.
    let mut unchanged = true;
    for (i, value) in std::iter::once(first).chain(values).enumerate() {
        unchanged &= i == 0;
        for raw in value.as_bytes().split(|&b| b == b',') {
            let member = trim_ows(raw);
            if member.is_empty() {
                // Empty members are allowed (and skipped): they appear when headers are joined.
                unchanged = false;
                continue;
            }
            unchanged &= member.len() == raw.len();
            if !valid_member(member) {
                unchanged = false;
                continue;
            }
            if members.len() == MAX_MEMBERS {
                return None;
            }
            let key = key_of(member);
            if members.iter().any(|m| key_of(m) == key) {
                return None;
            }
            members.push(member);
        }
    }
    if members.is_empty() {
        return None;
    }
    let len = |ms: &[&[u8]]| ms.iter().map(|m| m.len()).sum::<usize>() + ms.len() - 1;
    if len(&members) > MAX_LEN {
        unchanged = false;
        // "entries larger than 128 characters long SHOULD be removed first. Then entries SHOULD
        // be removed starting from the end of tracestate."
        while len(&members) > MAX_LEN {
            match members.iter().position(|m| m.len() > LONG_MEMBER) {
                Some(i) => {
                    members.remove(i);
                }
                None => {
                    members.pop();
                }
            }
            if members.is_empty() {
                return None;
            }
        }
    }
    if unchanged {
        return Some(first.clone());
    }
    let joined = members.join(&b","[..]);
    // Every byte was checked against the grammar (visible ASCII and spaces).
    HeaderValue::from_bytes(&joined).ok()
}

/// Optional white space (space and horizontal tab) on both sides.
fn trim_ows(b: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !is_ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ows(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

fn key_of(member: &[u8]) -> &[u8] {
    member.split(|&b| b == b'=').next().unwrap_or_default()
}

/// `key=value` by the spec's grammar:
///
/// ```text
/// key        = simple-key / multi-tenant-key
/// simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// multi-tenant-key = tenant-id "@" system-id
/// tenant-id  = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// system-id  = lcalpha 0*13( lcalpha / DIGIT / "_" / "-" / "*" / "/" )
/// value      = 0*255(chr) nblk-chr ; chr = %x20 / nblk-chr
/// nblk-chr   = %x21-2B / %x2D-3C / %x3E-7E
/// ```
fn valid_member(member: &[u8]) -> bool {
    let Some(eq) = member.iter().position(|&b| b == b'=') else {
        return false;
    };
    valid_key(&member[..eq]) && valid_value(&member[eq + 1..])
}

fn valid_key(key: &[u8]) -> bool {
    let lcalpha = |c: u8| c.is_ascii_lowercase();
    let rest = |c: u8| lcalpha(c) || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/');
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len()) && lcalpha(key[0]) && key[1..].iter().all(|&c| rest(c))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (lcalpha(tenant[0]) || tenant[0].is_ascii_digit())
                && tenant[1..].iter().all(|&c| rest(c))
                && (1..=14).contains(&system.len())
                && lcalpha(system[0])
                && system[1..].iter().all(|&c| rest(c))
        }
    }
}

fn valid_value(value: &[u8]) -> bool {
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    match value.split_last() {
        Some((&last, head)) => {
            value.len() <= 256 && nblk(last) && head.iter().all(|&c| c == b' ' || nblk(c))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combined(values: &[&str]) -> Option<String> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        combine(&values).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn one_clean_header_is_kept_as_is() {
        let v = HeaderValue::from_static("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let out = combine([&v]).unwrap();
        assert_eq!(out, v);
        // The same bytes, not a copy.
        assert_eq!(out.as_bytes().as_ptr(), v.as_bytes().as_ptr());
    }

    #[test]
    fn several_headers_are_one_list_in_order() {
        // The spec's example of a list split over two headers.
        assert_eq!(
            combined(&["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        // Optional white space and empty members disappear.
        assert_eq!(
            combined(&["a=1 ,\t, b=2", " ", "c=3,"]).as_deref(),
            Some("a=1,b=2,c=3")
        );
        assert_eq!(combined(&["", " , "]), None);
    }

    #[test]
    fn invalid_members_are_dropped_alone() {
        for bad in [
            "foo =1",              // space in the key
            "FOO=1",               // upper case key
            "foo.bar=1",           // '.' is not a key character
            "1a=1",                // a simple key starts with a letter
            "foo=",                // empty value
            "foo",                 // no '='
            "foo=a=b",             // '=' in the value
            "t@Sys=1",             // upper case system id
            "t@=1",                // empty system id
            "t@sysabcdefghijkl=1", // system id over 14
        ] {
            assert_eq!(
                combined(&[&format!("a=1,{bad},b=2")]).as_deref(),
                Some("a=1,b=2"),
                "{bad}"
            );
        }
        // Valid forms: multi-tenant keys, a value with inner spaces, the longest key and value.
        let key = format!("a{}", "b".repeat(255));
        let value = "v".repeat(256);
        for ok in [
            "fw529a3039@dt=ZmZmZmZmZmY".to_owned(),
            "1tenant@sys=x y".to_owned(),
            "a_-*/=!\"#".to_owned(),
            format!("{key}=1"),
            format!("k={value}"),
        ] {
            assert_eq!(combined(&[&ok]).as_deref(), Some(ok.as_str()), "{ok}");
        }
        for too_long in [format!("{key}b=1"), format!("k={value}v")] {
            assert_eq!(combined(&[&too_long]), None);
        }
    }

    #[test]
    fn thirty_two_members_pass_and_thirty_three_drop_the_header() {
        // As the W3C test suite sends them: split across two headers.
        let members: Vec<String> = (1..=33).map(|i| format!("bar{i:02}={i:02}")).collect();
        let first = members[..10].join(",");
        let thirty_two = combined(&[&first, &members[10..32].join(",")]).unwrap();
        assert_eq!(thirty_two.split(',').count(), 32);
        assert_eq!(combined(&[&first, &members[10..33].join(",")]), None);
        // Invalid members do not count towards the limit.
        let with_junk = format!("{},BAD=1", members[..32].join(","));
        assert_eq!(combined(&[&with_junk]).unwrap().split(',').count(), 32);
    }

    #[test]
    fn a_repeated_key_drops_the_header() {
        assert_eq!(combined(&["foo=1,foo=1"]), None);
        assert_eq!(combined(&["foo=1", "bar=2,foo=2"]), None);
    }

    #[test]
    fn long_lists_are_cut_by_the_spec_rule() {
        // Long members go first, then members from the end.
        let long = format!("long={}", "x".repeat(200));
        let shorts: Vec<String> = (0..25)
            .map(|i| format!("k{i:02}={}", "y".repeat(16)))
            .collect();
        let list = format!("{},{long},{}", shorts[..2].join(","), shorts[2..].join(","));
        let out = combined(&[&list]).unwrap();
        assert!(out.len() <= MAX_LEN, "{}", out.len());
        assert!(!out.contains("long="));
        // 20-byte members and commas: 24 of them fit in 512.
        let kept: Vec<&str> = out.split(',').collect();
        assert_eq!(kept.len(), 24);
        assert_eq!(
            kept,
            shorts[..24].iter().map(String::as_str).collect::<Vec<_>>()
        );
        // Exactly at the limit nothing is cut; one byte more drops the first long member.
        let (a, b) = (
            format!("a={}", "v".repeat(254)),
            format!("b={}", "w".repeat(253)),
        );
        let exact = format!("{a},{b}");
        assert_eq!(exact.len(), MAX_LEN);
        assert_eq!(combined(&[&exact]), Some(exact.clone()));
        let over = format!("{a},{b}w");
        assert_eq!(combined(&[&over]), Some(format!("{b}w")));
    }
}
