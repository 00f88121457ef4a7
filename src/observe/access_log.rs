//! The access log: one JSON object per line per request, written by a thread of its own.
//!
//! A request appends its record, in a compact binary form ([`encode`]), to one shared bounded
//! buffer (a lock held for a copy); the writer thread takes the whole buffer every few
//! milliseconds, formats each record as its JSON line and writes them. A request does no
//! formatting, no allocation and no wake-up. When the
//! writer falls behind, lines are dropped and counted (`mpapi_access_log_dropped_total`)
//! rather than slowing requests. A file is reopened on [`AccessLog::reopen`] (SIGHUP), so
//! logrotate can move it away. Lines hold no token, session key, phone number or query string.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use super::metrics::Metrics;

/// Where access log lines go (`log.access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

/// Bytes waiting for the writer; a line that would go past this is dropped.
const BACKLOG_BYTES: usize = 8 << 20;

/// What requests and the writer share.
struct Shared {
    pending: Mutex<Vec<u8>>,
    reopen: AtomicBool,
    closed: AtomicBool,
}

/// The request side of the access log.
pub struct AccessLog {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One request, as the access log records it.
pub struct AccessRecord<'a> {
    pub request_id: Option<&'a str>,
    pub client_ip: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub bytes_sent: usize,
    pub app: Option<&'a str>,
    pub route: &'a str,
    pub user_id: Option<i64>,
    pub upstream: Option<&'a str>,
    pub upstream_time: Option<Duration>,
}

impl AccessLog {
    /// Open `target` and start its writer thread.
    pub fn start(target: &AccessLogTarget, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let sink = Sink::open(target)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(256 * 1024)),
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("mpapi-access-log".into())
            .spawn(move || write_lines(sink, &writer))?;
        Ok(Self {
            shared,
            metrics,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Write every line queued so far and stop the writer: the last thing a process does
    /// before it exits, so that no line of a request it answered is lost.
    pub fn finish(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    /// Queue one line; never waits for the writer.
    pub fn record(&self, record: &AccessRecord<'_>) {
        thread_local! {
            static ENCODED: std::cell::RefCell<Vec<u8>> =
                std::cell::RefCell::new(Vec::with_capacity(512));
        }
        let at = now_micros();
        ENCODED.with_borrow_mut(|encoded| {
            encoded.clear();
            encode(encoded, record, at);
            let mut pending = self.shared.pending.lock();
            if pending.len() + encoded.len() > BACKLOG_BYTES {
                drop(pending);
                self.metrics.access_log_dropped();
            } else {
                pending.extend_from_slice(encoded);
            }
        });
    }

    /// Reopen the file before the next line (after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

enum Sink {
    Stdout(std::io::Stdout),
    File(PathBuf, BufWriter<std::fs::File>),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> std::io::Result<Self> {
        Ok(match target {
            AccessLogTarget::Stdout => Self::Stdout(std::io::stdout()),
            AccessLogTarget::File(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                Self::File(path.clone(), BufWriter::with_capacity(64 * 1024, file))
            }
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.lock().write_all(bytes),
            Self::File(_, out) => out.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.lock().flush(),
            Self::File(_, out) => out.flush(),
        }
    }

    fn reopen(&mut self) {
        if let Self::File(path, out) = self {
            let _ = out.flush();
            match OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(file) => *out = BufWriter::with_capacity(64 * 1024, file),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot reopen the access log")
                }
            }
        }
    }
}

/// How often the writer takes what requests queued. It never waits on them, so a request
/// never has a sleeping thread to wake (a system call per request); lines reach the file
/// within this interval.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// The writer: take every queued byte (swapping in an empty buffer), write, flush, sleep.
fn write_lines(mut sink: Sink, shared: &Shared) {
    let mut spare = Vec::with_capacity(256 * 1024);
    loop {
        // Checked before taking, so a line queued after the reopen goes to the new file.
        if shared.reopen.swap(false, Ordering::Relaxed) {
            sink.reopen();
        }
        let closed = shared.closed.load(Ordering::Relaxed);
        std::mem::swap(&mut *shared.pending.lock(), &mut spare);
        if !spare.is_empty() {
            let mut records = spare.as_slice();
            let mut line = String::with_capacity(512);
            while !records.is_empty() {
                let Some((record, at)) = decode(&mut records) else {
                    tracing::error!(
                        "access log: a malformed record; the rest of the batch is lost"
                    );
                    break;
                };
                line.clear();
                format_into(&mut line, &record, at);
                if let Err(error) = sink.write(line.as_bytes()) {
                    tracing::error!(%error, "cannot write the access log");
                    break;
                }
            }
            if let Err(error) = sink.flush() {
                tracing::error!(%error, "cannot write the access log");
            }
            spare.clear();
        }
        if closed {
            return;
        }
        std::thread::sleep(WRITE_EVERY);
    }
}

/// Now, in microseconds since the Unix epoch.
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Append `r`, made at `at` (Unix microseconds), to `out` in the form [`decode`] reads:
/// fixed-size numbers (little-endian), then each string as a 16-bit length and its bytes
/// (`u16::MAX` for none; a longer string is cut at a character boundary).
fn encode(out: &mut Vec<u8>, r: &AccessRecord<'_>, at: i64) {
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&r.status.to_le_bytes());
    out.extend_from_slice(&micros(r.duration).to_le_bytes());
    out.extend_from_slice(&(r.bytes_sent as u64).to_le_bytes());
    out.extend_from_slice(&r.user_id.unwrap_or(0).to_le_bytes());
    out.push(u8::from(r.user_id.is_some()));
    out.extend_from_slice(&r.upstream_time.map_or(0, micros).to_le_bytes());
    out.push(u8::from(r.upstream_time.is_some()));
    match r.client_ip {
        None => out.push(0),
        Some(std::net::IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(std::net::IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    for text in [
        r.request_id,
        Some(r.method),
        Some(r.path),
        r.app,
        Some(r.route),
        r.upstream,
    ] {
        encode_str(out, text);
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

const NONE: u16 = u16::MAX;

fn encode_str(out: &mut Vec<u8>, text: Option<&str>) {
    let Some(text) = text else {
        out.extend_from_slice(&NONE.to_le_bytes());
        return;
    };
    let mut end = text.len().min(usize::from(NONE - 1));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// Take one record off the front of `input`; `None` when it is not one [`encode`] wrote.
fn decode<'a>(input: &mut &'a [u8]) -> Option<(AccessRecord<'a>, i64)> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    fn array<const N: usize>(input: &mut &[u8]) -> Option<[u8; N]> {
        take(input, N)?.try_into().ok()
    }
    fn text<'a>(input: &mut &'a [u8]) -> Option<Option<&'a str>> {
        let len = u16::from_le_bytes(array(input)?);
        if len == NONE {
            return Some(None);
        }
        std::str::from_utf8(take(input, usize::from(len))?)
            .ok()
            .map(Some)
    }
    let at = i64::from_le_bytes(array(input)?);
    let status = u16::from_le_bytes(array(input)?);
    let duration = Duration::from_micros(u64::from_le_bytes(array(input)?));
    let bytes_sent = usize::try_from(u64::from_le_bytes(array(input)?)).unwrap_or(usize::MAX);
    let user_id = i64::from_le_bytes(array(input)?);
    let user_id = (array::<1>(input)?[0] == 1).then_some(user_id);
    let upstream_time = Duration::from_micros(u64::from_le_bytes(array(input)?));
    let upstream_time = (array::<1>(input)?[0] == 1).then_some(upstream_time);
    let client_ip = match array::<1>(input)?[0] {
        0 => None,
        4 => Some(std::net::IpAddr::from(array::<4>(input)?)),
        6 => Some(std::net::IpAddr::from(array::<16>(input)?)),
        _ => return None,
    };
    let request_id = text(input)?;
    let method = text(input)??;
    let path = text(input)??;
    let app = text(input)?;
    let route = text(input)??;
    let upstream = text(input)?;
    let record = AccessRecord {
        request_id,
        client_ip,
        method,
        path,
        status,
        duration,
        bytes_sent,
        app,
        route,
        user_id,
        upstream,
        upstream_time,
    };
    Some((record, at))
}

/// The JSON line of one request made at `at` (Unix microseconds).
pub fn format_line(r: &AccessRecord<'_>, at: i64) -> String {
    let mut line = String::with_capacity(320);
    format_into(&mut line, r, at);
    line
}

/// The JSON line of one request appended to `line`, written by hand: no map, no allocation
/// once `line` has grown to a line's size.
fn format_into(line: &mut String, r: &AccessRecord<'_>, at: i64) {
    line.push_str("{\"ts\":\"");
    push_timestamp(line, at);
    line.push_str("\",\"request_id\":");
    push_opt_str(line, r.request_id);
    line.push_str(",\"client_ip\":");
    match r.client_ip {
        Some(ip) => {
            let _ = write!(line, "\"{ip}\"");
        }
        None => line.push_str("null"),
    }
    line.push_str(",\"method\":");
    push_str(line, r.method);
    line.push_str(",\"path\":");
    push_str(line, r.path);
    let _ = write!(line, ",\"status\":{},\"duration_ms\":", r.status);
    push_millis(line, r.duration);
    let _ = write!(line, ",\"bytes_sent\":{},\"app\":", r.bytes_sent);
    push_opt_str(line, r.app);
    line.push_str(",\"route\":");
    push_str(line, r.route);
    line.push_str(",\"user_id\":");
    match r.user_id {
        Some(id) => {
            let _ = write!(line, "{id}");
        }
        None => line.push_str("null"),
    }
    line.push_str(",\"upstream\":");
    push_opt_str(line, r.upstream);
    line.push_str(",\"upstream_ms\":");
    match r.upstream_time {
        Some(time) => push_millis(line, time),
        None => line.push_str("null"),
    }
    line.push_str("}\n");
}

/// `at` (Unix microseconds) as RFC 3339 UTC with milliseconds. The text up to the second is
/// formatted once a second; each line adds only its milliseconds.
fn push_timestamp(line: &mut String, at: i64) {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let second = at.div_euclid(1_000_000);
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            text.clear();
            if let Some(time) = chrono::DateTime::from_timestamp(second, 0) {
                let _ = write!(text, "{}", time.format("%Y-%m-%dT%H:%M:%S"));
            }
        }
        line.push_str(text);
    });
    let _ = write!(line, ".{:03}Z", at.rem_euclid(1_000_000) / 1000);
}

/// A duration in milliseconds with three decimals, from whole microseconds (no float
/// formatting).
fn push_millis(line: &mut String, duration: Duration) {
    let micros = duration.as_micros();
    let _ = write!(line, "{}.{:03}", micros / 1000, micros % 1000);
}

fn push_opt_str(line: &mut String, value: Option<&str>) {
    match value {
        Some(value) => push_str(line, value),
        None => line.push_str("null"),
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
fn push_str(line: &mut String, value: &str) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field_and_hostile_paths_escaped() {
        let record = AccessRecord {
            request_id: Some("abc"),
            client_ip: Some("10.0.0.1".parse().unwrap_or(std::net::IpAddr::from([0; 4]))),
            method: "GET",
            path: "/app/\"x\\\n\u{1}",
            status: 200,
            duration: Duration::from_micros(1500),
            bytes_sent: 12,
            app: Some("wx1"),
            route: "app",
            user_id: None,
            upstream: Some("127.0.0.1:9000"),
            upstream_time: Some(Duration::from_millis(1)),
        };
        // Through the binary form the writer reads, as every line goes.
        let mut encoded = Vec::new();
        let at = now_micros();
        encode(&mut encoded, &record, at);
        encode(&mut encoded, &record, at + 1_000);
        let mut input = encoded.as_slice();
        let (first, first_at) = decode(&mut input).unwrap_or_else(|| panic!("undecodable"));
        assert_eq!(first_at, at);
        assert!(decode(&mut input).is_some());
        assert!(input.is_empty());
        let line = format_line(&first, first_at);
        assert!(line.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(value["path"], "/app/\"x\\\n\u{1}");
        assert_eq!(value["status"], 200);
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["user_id"], serde_json::Value::Null);
        assert_eq!(value["upstream"], "127.0.0.1:9000");
        assert_eq!(value["app"], "wx1");
        let ts = value["ts"].as_str().unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(ts.len(), "2026-01-01T00:00:00.000Z".len());
    }

    #[test]
    fn records_round_trip_with_absent_fields_an_ipv6_peer_and_an_overlong_path() {
        let path = format!("/app/{}", "é".repeat(40_000));
        let record = AccessRecord {
            request_id: None,
            client_ip: Some(std::net::IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16])),
            method: "POST",
            path: &path,
            status: 0,
            duration: Duration::ZERO,
            bytes_sent: 0,
            app: None,
            route: "unknown",
            user_id: None,
            upstream: None,
            upstream_time: None,
        };
        let mut encoded = Vec::new();
        encode(&mut encoded, &record, 0);
        let mut input = encoded.as_slice();
        let (decoded, _) = decode(&mut input).unwrap_or_else(|| panic!("undecodable"));
        assert!(input.is_empty());
        assert_eq!(decoded.client_ip, record.client_ip);
        assert_eq!(decoded.request_id, None);
        assert!(decoded.path.len() < usize::from(NONE) && path.starts_with(decoded.path));
        let value: serde_json::Value =
            serde_json::from_str(&format_line(&decoded, 0)).unwrap_or_default();
        assert_eq!(value["client_ip"], "::1");
        assert_eq!(value["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["app"], serde_json::Value::Null);
    }
}
