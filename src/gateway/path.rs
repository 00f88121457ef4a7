//! Confinement of proxied paths: `..` must never climb out of `/app` and reach an upstream path
//! outside the app's prefix. Dot segments are removed as RFC 3986 §5.2.4 describes, also when
//! written percent-encoded (`%2e`, `.%2E`, …), because upstreams decode them. Encoded `/`, `\`
//! and NUL are refused outright: upstreams disagree about them, and no mini program needs them.
//! The query is never touched. A path that needs no change is borrowed, not copied.

use std::borrow::Cow;

/// The prefix every proxied path stays under.
pub const PREFIX: &str = "/app";

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`, `%5C` or `%00`, in any case.
    ForbiddenEncoding,
    /// The resolved path left the prefix.
    OutsidePrefix,
}

/// The path (no query) with dot segments removed, still under [`PREFIX`].
pub fn resolve(path: &str) -> Result<Cow<'_, str>, PathError> {
    // Without a `.` or a `%` there is neither a dot segment nor an encoding to refuse: most
    // paths are settled by this one scan.
    let plain = !path.bytes().any(|b| b == b'.' || b == b'%');
    if !plain && has_forbidden_encoding(path) {
        return Err(PathError::ForbiddenEncoding);
    }
    let resolved = if !plain && path.split('/').any(|s| dot_segment(s).is_some()) {
        Cow::Owned(remove_dot_segments(path))
    } else {
        Cow::Borrowed(path)
    };
    if under_prefix(&resolved) {
        Ok(resolved)
    } else {
        Err(PathError::OutsidePrefix)
    }
}

fn under_prefix(path: &str) -> bool {
    path == PREFIX || path.starts_with("/app/")
}

fn has_forbidden_encoding(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C') | (b'0', b'0')
            )
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    One,
    Two,
}

/// Whether `segment` is `.` or `..`, each dot literal or `%2e`/`%2E`.
fn dot_segment(segment: &str) -> Option<Dot> {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && (rest[2] | 0x20) == b'e'
        {
            rest = &rest[3..];
        } else {
            return None;
        }
        dots += 1;
        if dots > 2 {
            return None;
        }
    }
    match dots {
        1 => Some(Dot::One),
        2 => Some(Dot::Two),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path, segment by segment. `..` at the root stays at the root;
/// the prefix check after it refuses what climbed out.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match dot_segment(segment) {
            Some(Dot::One) => trailing_slash = i == last,
            Some(Dot::Two) => {
                output.pop();
                trailing_slash = i == last;
            }
            None => {
                output.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut resolved = String::with_capacity(path.len());
    for segment in &output {
        resolved.push('/');
        resolved.push_str(segment);
    }
    if trailing_slash || resolved.is_empty() {
        resolved.push('/');
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dot_segments_resolve_and_encoded_dots_count_as_dots() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/app", Ok("/app")),
            ("/app/x", Ok("/app/x")),
            ("/app/a/../b", Ok("/app/b")),
            ("/app/./x", Ok("/app/x")),
            ("/app/a/%2e%2e/b", Ok("/app/b")),
            ("/app/a/.%2E/b", Ok("/app/b")),
            ("/app/a/%2E./b", Ok("/app/b")),
            ("/app/a/%2e/b", Ok("/app/a/b")),
            ("/app/a/..", Ok("/app/")),
            ("/app/a/.", Ok("/app/a/")),
            ("/app/a/...", Ok("/app/a/...")),
            ("/app/a/..b", Ok("/app/a/..b")),
            ("/app/%2e%2e/x", Err(PathError::OutsidePrefix)),
            ("/app/..", Err(PathError::OutsidePrefix)),
            ("/app/../admin", Err(PathError::OutsidePrefix)),
            ("/app/a/../../x", Err(PathError::OutsidePrefix)),
            ("/app/a%2Fb", Err(PathError::ForbiddenEncoding)),
            ("/app/a%2fb", Err(PathError::ForbiddenEncoding)),
            ("/app/a%5cb", Err(PathError::ForbiddenEncoding)),
            ("/app/a%5Cb", Err(PathError::ForbiddenEncoding)),
            ("/app/a%00b", Err(PathError::ForbiddenEncoding)),
        ];
        for (path, expected) in cases {
            let got = resolve(path);
            assert_eq!(got.as_deref().map_err(|e| *e), *expected, "{path}");
        }
    }

    #[test]
    fn a_path_without_dot_segments_is_borrowed() {
        assert!(matches!(resolve("/app/a/b.json"), Ok(Cow::Borrowed(_))));
        assert!(matches!(resolve("/app/a/../b"), Ok(Cow::Owned(_))));
    }

    proptest! {
        #[test]
        fn a_resolved_path_has_no_dot_segment_and_stays_under_the_prefix(
            rest in proptest::collection::vec(
                prop_oneof!["\\.", "\\.\\.", "%2[eE]", "%2[eE]%2[eE]", "\\.%2[eE]", "[a-z.%0-9]{0,4}"],
                0..8,
            )
        ) {
            let path = format!("/app/{}", rest.join("/"));
            if let Ok(resolved) = resolve(&path) {
                prop_assert!(under_prefix(&resolved), "{} -> {}", path, resolved);
                prop_assert!(resolved.split('/').all(|s| dot_segment(s).is_none()), "{} -> {}", path, resolved);
            }
        }
    }
}
