//! What `POST /notify` accepts, parsed into the subscribe message it will send.
//!
//! Two request shapes are accepted:
//! - the original service's, a template message: `template_id`, `formid`, `page`, `data` as a
//!   JSON *string* (`"{\"keyword1\":{\"value\":\"x\",\"color\":\"#173177\"}}"`),
//!   `emphasis_keyword`. WeChat switched template messages off in 2020 (they answer 45103), so
//!   the message is converted: `formid`, `emphasis_keyword` and each value's `color` are
//!   dropped, and the data is sent as subscribe-message data;
//! - the subscribe-message shape: `data` as an object, `miniprogram_state`, `lang`.
//!
//! `active_at` is `yyyy-MM-dd HH:mm:ss` in the app's time zone; absent or empty means now.

use chrono::{LocalResult, NaiveDateTime, TimeZone};
use chrono_tz::Tz;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

/// The `active_at` format, as the original service documented it.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";
/// Longest serialized data (the store's column holds 8192 characters).
const MAX_DATA_CHARS: usize = 8192;
const MINIPROGRAM_STATES: [&str; 3] = ["developer", "trial", "formal"];
const LANGS: [&str; 4] = ["zh_CN", "en_US", "zh_HK", "zh_TW"];

/// The request body of `POST /notify` (both shapes; unknown fields are ignored).
#[derive(Debug, Default, Deserialize)]
pub struct NotifyRequest {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub template_id: Option<String>,
    /// Template messages only; accepted and dropped.
    #[serde(default, alias = "form_id")]
    pub formid: Option<IgnoredAny>,
    #[serde(default)]
    pub active_at: Option<String>,
    #[serde(default)]
    pub page: Option<String>,
    /// An object `{key: {value}}`, or (original shape) a JSON string of one.
    #[serde(default)]
    pub data: Option<Value>,
    /// Template messages only; accepted and dropped.
    #[serde(default)]
    pub emphasis_keyword: Option<IgnoredAny>,
    #[serde(default)]
    pub miniprogram_state: Option<String>,
    #[serde(default)]
    pub lang: Option<String>,
}

/// A validated notification, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub template_id: String,
    /// Without a leading `/`; `None` when absent or empty.
    pub page: Option<String>,
    /// Subscribe-message data: `{key: {"value": "…"}}`, nothing else.
    pub data: Value,
    pub miniprogram_state: Option<String>,
    pub lang: Option<String>,
    pub description: Option<String>,
    /// Unix seconds.
    pub active_at: i64,
}

impl Message {
    /// Validate `request`; the error says which field is wrong and why.
    pub fn parse(request: NotifyRequest, timezone: Tz, now: i64) -> Result<Self, String> {
        let template_id = request.template_id.unwrap_or_default();
        let template_id = template_id.trim();
        if template_id.is_empty() {
            return Err("template_id is required".into());
        }
        let template_ok = template_id.len() <= 128
            && template_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !template_ok {
            return Err("template_id must be up to 128 letters, digits, '-' or '_'".into());
        }
        let page = request.page.filter(|p| !p.is_empty());
        if let Some(page) = &page {
            if page.starts_with('/') {
                return Err("page must not start with '/' (e.g. pages/index/index)".into());
            }
            if page.chars().count() > 1024 || page.chars().any(|c| c.is_control() || c == ' ') {
                return Err("page must be a path of up to 1024 characters".into());
            }
        }
        let data = parse_data(request.data)?;
        let miniprogram_state = one_of(
            "miniprogram_state",
            request.miniprogram_state,
            &MINIPROGRAM_STATES,
        )?;
        let lang = one_of("lang", request.lang, &LANGS)?;
        let description = request.description.filter(|d| !d.is_empty());
        if description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 255)
        {
            return Err("description must be at most 255 characters".into());
        }
        let active_at = parse_active_at(request.active_at.as_deref(), timezone, now)?;
        Ok(Self {
            template_id: template_id.to_string(),
            page,
            data,
            miniprogram_state,
            lang,
            description,
            active_at,
        })
    }
}

/// `data` as subscribe-message data: an object (or a JSON string of one) of
/// `{key: {"value": text}}`. Numbers are accepted as text; any other field of a value (the
/// template message's `color`) is dropped.
fn parse_data(data: Option<Value>) -> Result<Value, String> {
    const SHAPE: &str = "data must be an object of {key: {\"value\": text}}";
    let data = match data {
        None | Some(Value::Null) => return Err("data is required".into()),
        Some(Value::String(text)) => serde_json::from_str::<Value>(&text)
            .map_err(|_| format!("{SHAPE}, or a JSON string of one"))?,
        Some(other) => other,
    };
    let Value::Object(fields) = data else {
        return Err(SHAPE.into());
    };
    if fields.is_empty() {
        return Err("data must have at least one key".into());
    }
    let mut out = Map::with_capacity(fields.len());
    for (key, field) in fields {
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(format!("data: key {key:?} must be letters, digits or '_'"));
        }
        let value = match field.get("value") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => return Err(format!("data.{key}.value must be text ({SHAPE})")),
        };
        out.insert(key, serde_json::json!({ "value": value }));
    }
    let data = Value::Object(out);
    if data.to_string().chars().count() > MAX_DATA_CHARS {
        return Err(format!(
            "data must be at most {MAX_DATA_CHARS} characters as JSON"
        ));
    }
    Ok(data)
}

fn one_of(field: &str, value: Option<String>, allowed: &[&str]) -> Result<Option<String>, String> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(format!("{field} must be one of {}", allowed.join(", ")))
        }
        other => Ok(other),
    }
}

/// `yyyy-MM-dd HH:mm:ss` in `timezone` as Unix seconds; absent or empty is `now`. A time in
/// the past is accepted (sent at once).
pub fn parse_active_at(text: Option<&str>, timezone: Tz, now: i64) -> Result<i64, String> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(now);
    }
    const WRONG: &str = "active_at must be yyyy-MM-dd HH:mm:ss";
    // chrono accepts unpadded fields; the documented format is fixed-width.
    if text.len() != 19 {
        return Err(WRONG.into());
    }
    let local = NaiveDateTime::parse_from_str(text, TIME_FORMAT).map_err(|_| WRONG.to_string())?;
    match timezone.from_local_datetime(&local) {
        LocalResult::Single(at) => Ok(at.timestamp()),
        // A repeated hour when clocks go back: the first one.
        LocalResult::Ambiguous(first, _) => Ok(first.timestamp()),
        LocalResult::None => Err(format!(
            "active_at {text} does not exist in {timezone} (clocks skip it)"
        )),
    }
}

/// Unix seconds as `yyyy-MM-dd HH:mm:ss` in `timezone`.
pub fn format_time(unix: i64, timezone: Tz) -> String {
    match timezone.timestamp_opt(unix, 0) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
            at.format(TIME_FORMAT).to_string()
        }
        LocalResult::None => unix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHANGHAI: Tz = chrono_tz::Asia::Shanghai;

    fn request(body: Value) -> NotifyRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn active_at_is_read_in_the_apps_time_zone() {
        // 2024-05-01 08:00:00 in Shanghai (UTC+8) is 00:00:00 UTC.
        assert_eq!(
            parse_active_at(Some("2024-05-01 08:00:00"), SHANGHAI, 0),
            Ok(1_714_521_600)
        );
        assert_eq!(
            parse_active_at(Some("2024-05-01 00:00:00"), chrono_tz::UTC, 0),
            Ok(1_714_521_600)
        );
        assert_eq!(format_time(1_714_521_600, SHANGHAI), "2024-05-01 08:00:00");
    }

    #[test]
    fn a_missing_or_empty_active_at_means_now() {
        assert_eq!(parse_active_at(None, SHANGHAI, 42), Ok(42));
        assert_eq!(parse_active_at(Some(""), SHANGHAI, 42), Ok(42));
    }

    #[test]
    fn active_at_in_another_format_is_refused() {
        for text in [
            "2024-05-01",
            "2024-05-01T08:00:00",
            "2024-5-1 8:00:00",
            "2024-13-01 08:00:00",
            "01/05/2024 08:00:00",
            "tomorrow",
        ] {
            assert!(parse_active_at(Some(text), SHANGHAI, 0).is_err(), "{text}");
        }
    }

    #[test]
    fn a_time_skipped_by_daylight_saving_is_refused() {
        let new_york: Tz = chrono_tz::America::New_York;
        assert!(parse_active_at(Some("2024-03-10 02:30:00"), new_york, 0).is_err());
    }

    #[test]
    fn the_template_message_shape_is_converted_to_subscribe_data() {
        let message = Message::parse(
            request(json!({
                "template_id": "tmpl-1",
                "formid": "abc",
                "emphasis_keyword": "keyword1.DATA",
                "page": "pages/index/index?x=1",
                "data": "{\"keyword1\":{\"value\":\"339208499\",\"color\":\"#173177\"},\"keyword2\":{\"value\":12}}",
                "active_at": "2024-05-01 08:00:00",
                "description": "order shipped",
            })),
            SHANGHAI,
            0,
        )
        .unwrap();
        assert_eq!(
            message.data,
            json!({"keyword1": {"value": "339208499"}, "keyword2": {"value": "12"}})
        );
        assert_eq!(message.page.as_deref(), Some("pages/index/index?x=1"));
        assert_eq!(message.active_at, 1_714_521_600);
        assert_eq!(message.description.as_deref(), Some("order shipped"));
    }

    #[test]
    fn the_subscribe_shape_keeps_state_and_lang() {
        let message = Message::parse(
            request(json!({
                "template_id": "tmpl-1",
                "data": {"thing1": {"value": "hi"}},
                "miniprogram_state": "trial",
                "lang": "en_US",
            })),
            SHANGHAI,
            7,
        )
        .unwrap();
        assert_eq!(message.data, json!({"thing1": {"value": "hi"}}));
        assert_eq!(message.miniprogram_state.as_deref(), Some("trial"));
        assert_eq!(message.lang.as_deref(), Some("en_US"));
        assert_eq!(message.page, None);
        assert_eq!(message.active_at, 7);
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let ok = json!({"template_id": "tmpl-1", "data": {"k": {"value": "v"}}});
        let cases = [
            ("template_id", json!({"template_id": null})),
            ("template_id", json!({"template_id": ""})),
            ("template_id", json!({"template_id": "has space"})),
            ("page", json!({"page": "/pages/index"})),
            ("data", json!({"data": null})),
            ("data", json!({"data": "not json"})),
            ("data", json!({"data": "[1]"})),
            ("data", json!({"data": []})),
            ("data", json!({"data": {}})),
            ("data", json!({"data": {"k": "v"}})),
            ("data", json!({"data": {"k": {"color": "#000"}}})),
            ("data", json!({"data": {"k": {"value": {"x": 1}}}})),
            ("data", json!({"data": {"bad key": {"value": "v"}}})),
            ("miniprogram_state", json!({"miniprogram_state": "prod"})),
            ("lang", json!({"lang": "fr"})),
            ("active_at", json!({"active_at": "2024/05/01 08:00"})),
            ("description", json!({"description": "x".repeat(256)})),
        ];
        for (field, change) in cases {
            let mut body = ok.clone();
            for (key, value) in change.as_object().unwrap() {
                body[key] = value.clone();
            }
            let error = Message::parse(request(body.clone()), SHANGHAI, 0).unwrap_err();
            assert!(error.starts_with(field), "{body}: {error}");
        }
    }
}
