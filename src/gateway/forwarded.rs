//! What the upstream learns about the client: its address (`X-Forwarded-For`, `X-Real-IP`),
//! the scheme it used (`X-Forwarded-Proto`), and the request's id (`X-Request-Id`).
//!
//! A client can write any `X-Forwarded-For` it likes, so the chain it sends is believed only
//! when the TCP peer is a proxy the operator trusts (`server.trusted_proxies`); otherwise it is
//! replaced by the peer's address. The client address (`X-Real-IP`) is then the first address,
//! reading the chain from the right, that is not a trusted proxy: everything left of it was
//! written by someone nobody vouches for.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;
use rand::RngCore;

/// The header carrying the request's id, and those telling the upstream about the client;
/// parsed at compile time, so a request parses and allocates no name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Longest client-sent `X-Request-Id` kept as it is.
const MAX_REQUEST_ID: usize = 128;

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client as the gateway sees it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The client's own address: the peer, or from a trusted proxy's `X-Forwarded-For`.
    pub real_ip: IpAddr,
    /// Whether the peer's chain is believed (the peer is a trusted proxy).
    pub via_trusted_proxy: bool,
}

impl Client {
    /// Who sent `request` from `peer`.
    pub fn of(request: &RequestHeader, peer: IpAddr, trusted: &TrustedProxies) -> Self {
        if trusted.is_empty() || !trusted.contains(peer) {
            return Self {
                peer,
                real_ip: peer,
                via_trusted_proxy: false,
            };
        }
        Self {
            peer,
            real_ip: real_ip(request, peer, trusted),
            via_trusted_proxy: true,
        }
    }

    /// Set `X-Forwarded-For`, `X-Real-IP` and `X-Forwarded-Proto` on the upstream request,
    /// replacing whatever the client sent under those names (a trusted proxy's chain is kept,
    /// with the peer appended).
    pub fn write_headers(&self, headers: &mut HeaderMap, https: bool) -> pingora::Result<()> {
        let real_ip = ip_value(self.real_ip);
        let forwarded_for = if self.via_trusted_proxy {
            let mut chain = client_chain(headers);
            if !chain.is_empty() {
                chain.push_str(", ");
            }
            chain.push_str(&self.peer.to_string());
            HeaderValue::from_str(&chain).unwrap_or_else(|_| ip_value(self.peer))
        } else {
            real_ip.clone()
        };
        let proto = HeaderValue::from_static(if https { "https" } else { "http" });
        for (name, value) in [
            (&X_FORWARDED_FOR, forwarded_for),
            (&X_REAL_IP, real_ip),
            (&X_FORWARDED_PROTO, proto),
        ] {
            headers
                .try_insert(name.clone(), value)
                .map_err(super::too_many_headers)?;
        }
        Ok(())
    }
}

/// An address as a header value. IPv4, nearly every client, is written digit by digit:
/// through `fmt` it cost about 1,500 instructions a request (`scripts/instructions.sh`).
fn ip_value(ip: IpAddr) -> HeaderValue {
    // Room for the longest IPv6 text, `ffff:…:255.255.255.255` (45 bytes).
    let mut text = [0u8; 45];
    let len = match ip {
        IpAddr::V4(v4) => write_ipv4(&mut text, v4),
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{v6}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    // An address's text is always a valid value; the fallback is never taken.
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// `ip` in dotted decimal at the start of `out`; returns its length (at most 15).
fn write_ipv4(out: &mut [u8; 45], ip: Ipv4Addr) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Every `X-Forwarded-For` value the client sent, joined in order.
fn client_chain(headers: &HeaderMap) -> String {
    let mut chain = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if !chain.is_empty() {
            chain.push_str(", ");
        }
        chain.push_str(text);
    }
    chain
}

/// From the right of the chain (the peer last), the first address that is not a trusted proxy.
/// An entry that is not an address ends the walk: nothing left of it can be believed, so the
/// last address read stands.
fn real_ip(request: &RequestHeader, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut current = peer;
    let values: Vec<&str> = request
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|value| value.rsplit(',')) {
        if !trusted.contains(current) {
            break;
        }
        match parse_entry(entry) {
            Some(ip) => current = ip,
            None => break,
        }
    }
    current
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip())
}

/// The request's id: the client's `X-Request-Id` when it is 1–128 visible ASCII characters,
/// else a new one (128 random bits, 32 hex digits: unguessable, so an id never tells one
/// client about another's requests).
/// `client` is the request's (first) `X-Request-Id`.
pub fn request_id(client: Option<&HeaderValue>) -> (HeaderValue, bool) {
    if let Some(value) = client
        && is_acceptable_id(value.as_bytes())
    {
        return (value.clone(), true);
    }
    (new_request_id(), false)
}

fn is_acceptable_id(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// 32 lower-case hex digits from the thread's CSPRNG.
pub fn new_request_id() -> HeaderValue {
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in random.iter().enumerate() {
        text[2 * i] = DIGITS[usize::from(byte >> 4)];
        text[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Hex digits are always a valid value; the fallback is never taken.
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(forwarded_for: &[&str]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/app/x", None).unwrap();
        for value in forwarded_for {
            request.append_header("X-Forwarded-For", *value).unwrap();
        }
        request
    }

    fn trusted(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(networks.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn an_untrusted_peer_replaces_the_chain() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let request = request(&["1.1.1.1"]);
        let client = Client::of(&request, peer, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client.real_ip, peer);
        let mut headers = request.headers.clone();
        client.write_headers(&mut headers, false).unwrap();
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(headers["x-real-ip"], "203.0.113.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }

    #[test]
    fn a_trusted_peer_keeps_the_chain_and_the_real_ip_skips_trusted_hops() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let request = request(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        let client = Client::of(&request, peer, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client.real_ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let mut headers = request.headers.clone();
        client.write_headers(&mut headers, true).unwrap();
        assert_eq!(
            headers["x-forwarded-for"],
            "6.6.6.6, 198.51.100.7, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn addresses_are_written_as_their_standard_text() {
        let mut addresses: Vec<IpAddr> =
            ["::", "::1", "2001:db8::8:800:200c:417a", "::ffff:1.2.3.4"]
                .iter()
                .map(|text| text.parse().unwrap())
                .collect();
        for octet in 0..=255u8 {
            addresses.push(IpAddr::from([octet, 255 - octet, octet / 3, 9]));
        }
        addresses.push(IpAddr::from([255, 255, 255, 255]));
        for ip in addresses {
            assert_eq!(ip_value(ip), ip.to_string().as_str(), "{ip}");
        }
    }

    #[test]
    fn garbage_in_the_chain_stops_the_walk() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let request = request(&["1.2.3.4, nonsense"]);
        let client = Client::of(&request, peer, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client.real_ip, peer);
    }

    #[test]
    fn request_ids_are_kept_only_when_visible_ascii_and_short() {
        let kept = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&kept)), (kept.clone(), true));
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        let (generated, kept) = request_id(Some(&long));
        assert!(!kept);
        assert_eq!(generated.len(), 32);
        assert!(!request_id(Some(&HeaderValue::from_static("has space"))).1);
        assert!(!request_id(None).1);
        assert_ne!(new_request_id(), new_request_id());
    }
}
