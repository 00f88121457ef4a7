//! One pass over the client's request headers for what the gateway needs before it decides
//! anything: the values it reads (`User-App`, `User-Token`, `X-Request-Id`; three hashed
//! look-ups otherwise), whether that identity is ambiguous, and whether Pingora's hop-by-hop
//! sanitation has anything to do.
//!
//! Pingora's standard upstream-request policy removes the hop-by-hop headers (and whatever
//! `Connection` names) with thirteen map look-ups on every request, whether or not any is there
//! (3,300 instructions a request by `scripts/instructions.sh`). Most requests carry
//! none, or only `Connection: keep-alive` or `close`: for those the gateway hands Pingora the
//! `preserve` policy and, for the second kind, removes `Connection` itself in its own pass over
//! the upstream request. The upstream receives exactly what the standard policy would send;
//! anything else (an `Upgrade`, `TE`, `Transfer-Encoding`, a `Connection` naming other headers)
//! goes through the standard policy unchanged.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::forwarded::X_REQUEST_ID;
use super::{USER_APP, USER_TOKEN};

/// What one pass over a request's headers found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeaderScan<'a> {
    /// The first `User-App`, `User-Token` and `X-Request-Id` values.
    pub user_app: Option<&'a HeaderValue>,
    pub user_token: Option<&'a HeaderValue>,
    pub request_id: Option<&'a HeaderValue>,
    /// `User-App` or `User-Token` came more than once.
    pub ambiguous_identity: bool,
    /// What the request's hop-by-hop headers need.
    pub hop_by_hop: HopByHop,
}

/// The hop-by-hop headers of a request, as far as forwarding it is concerned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum HopByHop {
    /// None at all: the standard policy would change nothing.
    #[default]
    Absent,
    /// One `Connection: keep-alive` or `Connection: close` and no other: the standard policy
    /// would only remove `Connection`.
    ConnectionOnly,
    /// Anything else: Pingora's standard policy sanitises the request.
    Present,
}

impl HopByHop {
    /// Whether Pingora's standard sanitation can be skipped (see the module's doc).
    pub fn skips_sanitation(self) -> bool {
        self != Self::Present
    }
}

/// Look at every header of `headers` once.
pub fn scan(headers: &HeaderMap) -> HeaderScan<'_> {
    let mut found = HeaderScan::default();
    let (mut apps, mut tokens, mut connections) = (0u32, 0u32, 0u32);
    let mut plain_connection = true;
    let mut other_hop_by_hop = false;
    for (name, value) in headers {
        if *name == header::CONNECTION {
            connections += 1;
            plain_connection &= is_keep_alive_or_close(value);
        } else if *name == USER_APP {
            apps += 1;
            found.user_app.get_or_insert(value);
        } else if *name == USER_TOKEN {
            tokens += 1;
            found.user_token.get_or_insert(value);
        } else if *name == X_REQUEST_ID {
            found.request_id.get_or_insert(value);
        } else {
            other_hop_by_hop |= is_hop_by_hop(name);
        }
    }
    found.hop_by_hop = match (connections, other_hop_by_hop) {
        (0, false) => HopByHop::Absent,
        (1, false) if plain_connection => HopByHop::ConnectionOnly,
        _ => HopByHop::Present,
    };
    found.ambiguous_identity = apps > 1 || tokens > 1;
    found
}

/// The hop-by-hop headers the standard policy removes besides `Connection`, and `close`, the
/// header a `Connection: close` would name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::UPGRADE
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "http2-settings" | "close"
        )
}

fn is_keep_alive_or_close(value: &HeaderValue) -> bool {
    let value = value.as_bytes().trim_ascii();
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    /// What the scan of `lines` says about hop-by-hop headers and identity.
    fn scanned(lines: &[(&str, &str)]) -> Facts {
        let headers = headers(lines);
        let found = scan(&headers);
        Facts {
            hop_by_hop: found.hop_by_hop,
            ambiguous_identity: found.ambiguous_identity,
        }
    }

    struct Facts {
        hop_by_hop: HopByHop,
        ambiguous_identity: bool,
    }

    #[test]
    fn the_first_value_of_each_read_header_is_found() {
        let headers = headers(&[
            ("accept", "*/*"),
            ("user-app", "wx1"),
            ("x-request-id", "r-1"),
            ("user-token", "t"),
            ("x-request-id", "r-2"),
        ]);
        let found = scan(&headers);
        let value = |v: Option<&HeaderValue>| v.map(|v| v.to_str().unwrap().to_string());
        assert_eq!(value(found.user_app).as_deref(), Some("wx1"));
        assert_eq!(value(found.user_token).as_deref(), Some("t"));
        assert_eq!(value(found.request_id).as_deref(), Some("r-1"));
        assert_eq!(found.request_id, headers.get("x-request-id"));
        assert_eq!(scan(&HeaderMap::new()).user_app, None);
    }

    #[test]
    fn only_a_plain_connection_header_skips_sanitation() {
        let cases: [(&[(&str, &str)], HopByHop); 12] = [
            (&[("accept", "*/*")], HopByHop::Absent),
            (&[("connection", "keep-alive")], HopByHop::ConnectionOnly),
            (&[("connection", " Close ")], HopByHop::ConnectionOnly),
            (&[("connection", "keep-alive, x-a")], HopByHop::Present),
            (&[("connection", "x-a")], HopByHop::Present),
            (
                &[("connection", "close"), ("connection", "close")],
                HopByHop::Present,
            ),
            (
                &[("connection", "close"), ("close", "1")],
                HopByHop::Present,
            ),
            (&[("keep-alive", "timeout=5")], HopByHop::Present),
            (&[("upgrade", "websocket")], HopByHop::Present),
            (&[("transfer-encoding", "chunked")], HopByHop::Present),
            (&[("te", "trailers")], HopByHop::Present),
            (&[("proxy-authorization", "Basic x")], HopByHop::Present),
        ];
        for (lines, expected) in cases {
            assert_eq!(scanned(lines).hop_by_hop, expected, "{lines:?}");
        }
        for name in [
            "trailer",
            "proxy-authenticate",
            "proxy-connection",
            "http2-settings",
        ] {
            assert_eq!(
                scanned(&[(name, "x")]).hop_by_hop,
                HopByHop::Present,
                "{name}"
            );
        }
    }

    #[test]
    fn a_repeated_user_app_or_user_token_is_ambiguous() {
        assert!(!scanned(&[("user-app", "a"), ("user-token", "t")]).ambiguous_identity);
        assert!(scanned(&[("user-app", "a"), ("user-app", "b")]).ambiguous_identity);
        assert!(scanned(&[("user-token", "a"), ("user-token", "a")]).ambiguous_identity);
    }
}
