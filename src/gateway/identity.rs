//! Identity headers: what a client may not send, and what mpapi sends on its behalf.
//!
//! Hot path. Stripping is one pass over the request's headers that usually finds only
//! `User-Token`; injecting takes five values rendered once, when the session entered the
//! cache, as slices of one buffer (a reference count each), under names parsed at compile
//! time: nothing is parsed or allocated per request. Both work on the upstream request's own
//! header map (see `gateway::prepare_upstream_request`).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

use crate::store::UserRow;

/// Header names mpapi owns, lower-case. A client-sent copy is removed whatever its case or its
/// `_`/`-` spelling; `user-token` is consumed here and never forwarded.
const OWNED: [&str; 6] = [
    "user-id",
    "user-openid",
    "user-unionid",
    "user-extra",
    "user-mobile",
    "user-token",
];

/// Names under which identity is injected, in the order of [`IdentityHeaders::values`].
pub const INJECTED: [&str; 5] = [
    "user-id",
    "user-openid",
    "user-unionid",
    "user-extra",
    "user-mobile",
];

/// [`INJECTED`] as header names, parsed at compile time: a request clones a pointer.
static INJECTED_NAMES: [HeaderName; 5] = [
    HeaderName::from_static(INJECTED[0]),
    HeaderName::from_static(INJECTED[1]),
    HeaderName::from_static(INJECTED[2]),
    HeaderName::from_static(INJECTED[3]),
    HeaderName::from_static(INJECTED[4]),
];

/// Remove every client-sent identity header (and `User-Token`) in one pass over the headers.
pub fn strip_client_identity(headers: &mut HeaderMap) {
    // At most one hit per owned name (http's HeaderMap iterates duplicates under one key only
    // via get_all, but iter() yields each value; the array keeps the common case allocation-free).
    let mut found: [Option<HeaderName>; 8] = Default::default();
    let mut count = 0;
    for name in headers.keys() {
        if count < found.len() && is_owned(name.as_str()) {
            found[count] = Some(name.clone());
            count += 1;
        }
    }
    for name in found.iter().flatten() {
        headers.remove(name);
    }
    if count == found.len() {
        // More spoofed names than the array holds: finish with a slow second pass.
        let rest: Vec<_> = headers
            .keys()
            .filter(|name| is_owned(name.as_str()))
            .cloned()
            .collect();
        for name in &rest {
            headers.remove(name);
        }
    }
}

/// Add a session's five identity headers to the upstream request (client copies were stripped
/// first, so nothing of the same name is left to replace).
pub fn inject(headers: &mut HeaderMap, identity: &IdentityHeaders) -> pingora::Result<()> {
    for (name, value) in identity.values() {
        headers
            .try_append(name, value)
            .map_err(super::too_many_headers)?;
    }
    Ok(())
}

/// Whether a (lower-case) header name is one mpapi owns, reading `_` as `-`.
fn is_owned(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.len() < 7 || !(bytes.starts_with(b"user-") || bytes.starts_with(b"user_")) {
        return false;
    }
    OWNED.iter().any(|owned| {
        owned.len() == bytes.len()
            && owned
                .bytes()
                .zip(bytes)
                .all(|(o, &b)| o == b || (o == b'-' && b == b'_'))
    })
}

/// A user's identity headers, rendered once into one buffer.
///
/// Compact on purpose: a million of these live in the session cache. The five values are
/// written back to back into one buffer and checked once, when rendered; a request takes each
/// value as a slice of it (a reference count, no copy and no second check).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// The values of [`INJECTED`], back to back; every byte is valid in a header value.
    text: Bytes,
    /// Where each value ends in `text`; value `i` starts where value `i - 1` ends.
    ends: [u16; 5],
}

impl IdentityHeaders {
    /// Render the five values for `user`. Values stay ASCII: JSON is written with `\uXXXX`.
    pub fn render(user: &UserRow) -> Self {
        let unionid = user.unionid.as_deref().unwrap_or("");
        let extra = if user.nickname.is_some() || user.avatar_url.is_some() {
            ascii_json(&json!({
                "openId": user.openid,
                "unionId": unionid,
                "nickName": user.nickname.as_deref().unwrap_or(""),
                "avatarUrl": user.avatar_url.as_deref().unwrap_or(""),
            }))
        } else {
            String::new()
        };
        let mobile = match &user.phone_number {
            Some(phone) => ascii_json(&json!({
                "phoneNumber": phone,
                "purePhoneNumber": user.pure_phone_number.as_deref().unwrap_or(""),
                "countryCode": user.country_code.as_deref().unwrap_or(""),
            })),
            None => String::new(),
        };
        let id = user.id.to_string();
        let parts = [
            id.as_str(),
            sanitize(&user.openid),
            sanitize(unionid),
            extra.as_str(),
            mobile.as_str(),
        ];
        // Exactly sized: a larger vector would leave its spare room allocated for each of a
        // million sessions.
        let mut text = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; 5];
        for (end, part) in ends.iter_mut().zip(parts) {
            // A value that would not fit the offsets (or a header) is left out, as empty.
            if text.len() + part.len() <= usize::from(u16::MAX) {
                text.extend_from_slice(part.as_bytes());
            }
            *end = u16::try_from(text.len()).unwrap_or(u16::MAX);
        }
        let text = Bytes::from(text);
        // Every part is printable ASCII by construction; should one not be, nothing is sent.
        if HeaderValue::from_maybe_shared(text.clone()).is_err() {
            return Self {
                text: Bytes::new(),
                ends: [0; 5],
            };
        }
        Self { text, ends }
    }

    /// `(name, value)` pairs to insert into the upstream request.
    pub fn values(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        INJECTED_NAMES.iter().enumerate().map(move |(i, name)| {
            let range = self.range(i);
            let value = if range.is_empty() {
                HeaderValue::from_static("")
            } else {
                shared_value(self.text.slice(range))
            };
            (name.clone(), value)
        })
    }

    /// The user's openid, as sent in `User-Openid`.
    pub fn openid(&self) -> &str {
        std::str::from_utf8(&self.text[self.range(1)]).unwrap_or("")
    }

    /// Bytes held by this session's header values (for memory accounting).
    pub fn heap_size(&self) -> usize {
        self.text.len()
    }

    /// Where value `i` lies in `text`.
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        usize::from(start)..usize::from(self.ends[i])
    }
}

/// A header value over a slice of an [`IdentityHeaders`] buffer, without checking its bytes
/// again. Checking them (`HeaderValue::from_maybe_shared`) cost 0.3 µs per request for a full
/// profile's five values (`benches/hot_paths.rs`, identity/strip_and_inject 1.32 → 1.66 µs).
#[allow(unsafe_code)]
fn shared_value(slice: Bytes) -> HeaderValue {
    // SAFETY: `slice` is part of a buffer that `HeaderValue::from_maybe_shared` accepted in
    // `IdentityHeaders::render`. That check is byte by byte (`b >= 32 && b != 127 || b == b'\t'`),
    // so every part of an accepted buffer passes it too, and `IdentityHeaders` never changes its
    // buffer afterwards. (Debug builds check again: `http` does so in this function.)
    unsafe { HeaderValue::from_maybe_shared_unchecked(slice) }
}

/// Identifiers from WeChat are plain ASCII; anything else is not forwarded as a header.
fn sanitize(value: &str) -> &str {
    if value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        value
    } else {
        ""
    }
}

/// Serialize `value` as JSON whose every character is printable ASCII.
pub fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for ch in text.chars() {
        if (' '..='~').contains(&ch) {
            out.push(ch);
        } else {
            // serde_json already escaped control characters inside strings; what is left is
            // non-ASCII text (and DEL), written as UTF-16 escapes as JSON allows.
            for unit in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserRow {
        UserRow {
            id: 42,
            appid: "wxapp".into(),
            openid: "o-123".into(),
            unionid: None,
            session_key: "k".into(),
            expires_at: 0,
            nickname: Some("微信用户 😀".into()),
            avatar_url: Some("https://a/b.png".into()),
            phone_number: Some("+86 13800000000".into()),
            pure_phone_number: Some("13800000000".into()),
            country_code: Some("86".into()),
        }
    }

    #[test]
    fn owned_names_match_in_any_spelling() {
        for name in [
            "user-id",
            "user_id",
            "user-openid",
            "user_union_id",
            "user-token",
        ] {
            assert_eq!(is_owned(name), name != "user_union_id", "{name}");
        }
        for name in ["user-app", "user-agent", "x-user-id", "user-ids"] {
            assert!(!is_owned(name), "{name}");
        }
    }

    /// The five values as text, in the order of [`INJECTED`].
    fn rendered(headers: &IdentityHeaders) -> Vec<String> {
        headers
            .values()
            .map(|(_, v)| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn rendered_values_are_ascii_json_that_decodes_back() {
        let headers = IdentityHeaders::render(&user());
        let values = rendered(&headers);
        assert_eq!(values[0], "42");
        assert_eq!(values[1], "o-123");
        assert_eq!(headers.openid(), "o-123");
        assert_eq!(values[2], "");
        let extra: serde_json::Value = serde_json::from_str(&values[3]).unwrap();
        assert_eq!(extra["nickName"], "微信用户 😀");
        assert!(values[3].contains("\\ud83d\\ude00"));
        let mobile: serde_json::Value = serde_json::from_str(&values[4]).unwrap();
        assert_eq!(mobile["purePhoneNumber"], "13800000000");
    }

    #[test]
    fn a_user_without_profile_or_mobile_gets_empty_values_for_them() {
        let mut plain = user();
        plain.unionid = Some("u-9".into());
        plain.nickname = None;
        plain.avatar_url = None;
        plain.phone_number = None;
        let headers = IdentityHeaders::render(&plain);
        let values: Vec<_> = headers
            .values()
            .map(|(name, v)| (name, v.to_str().unwrap().to_string()))
            .collect();
        let expected = [
            ("user-id", "42"),
            ("user-openid", "o-123"),
            ("user-unionid", "u-9"),
            ("user-extra", ""),
            ("user-mobile", ""),
        ];
        for ((name, value), (expected_name, expected_value)) in values.iter().zip(expected) {
            assert_eq!(
                (name.as_str(), value.as_str()),
                (expected_name, expected_value)
            );
        }
        assert_eq!(headers.openid(), "o-123");
    }

    #[test]
    fn a_value_too_long_for_a_header_is_left_out_and_the_rest_kept() {
        let mut huge = user();
        huge.avatar_url = Some("a".repeat(70_000));
        let headers = IdentityHeaders::render(&huge);
        let values = rendered(&headers);
        assert_eq!(values[0], "42");
        assert_eq!(values[1], "o-123");
        assert_eq!(values[3], "", "User-Extra over 64 KiB is dropped");
        assert!(values[4].contains("13800000000"), "User-Mobile still fits");
    }

    #[test]
    fn strip_removes_every_spelling_and_keeps_other_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("User-Id", "1"),
            ("USER_OPENID", "o"),
            ("user-extra", "{}"),
            ("User-Token", "t"),
            ("User-App", "wx"),
            ("Accept", "*/*"),
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_client_identity(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["accept", "user-app"]);
    }
}
