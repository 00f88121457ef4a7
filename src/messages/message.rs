//! One pushed message, read from WeChat's fields into what the help desk receives.
//!
//! WeChat sends the same field names in JSON and in XML (where every value is text); both are
//! read into a JSON object first ([`fields`]), so this file is the one place that knows them.

use serde_json::{Map, Value, json};

use super::xml;

/// Longest `message_content` kept (the store's column holds 8192 characters).
pub const MAX_CONTENT_CHARS: usize = 8192;

/// A message as mpapi records and forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's openid (`FromUserName`).
    pub openid: String,
    /// `MsgType`: text, image, miniprogrampage, event…
    pub msg_type: String,
    /// `Event` for events, else empty.
    pub event: String,
    /// The help desk's `message_content`: the text, or JSON for structured messages.
    pub content: String,
    /// What identifies WeChat's retries of this message.
    pub dedup_key: String,
}

/// Why a (verified) body is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("body is neither JSON nor XML")]
    UnknownFormat,
    #[error("body is not valid JSON")]
    Json,
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    #[error("missing or invalid {0}")]
    Field(&'static str),
}

/// The fields of a JSON or XML body (told apart by its first character).
pub fn fields(body: &str) -> Result<Map<String, Value>, MessageError> {
    let body = body.trim_start_matches('\u{feff}').trim_start();
    match body.as_bytes().first() {
        Some(b'{') => match serde_json::from_str(body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(MessageError::Json),
        },
        Some(b'<') => Ok(xml::parse(body)?),
        _ => Err(MessageError::UnknownFormat),
    }
}

/// A field as text: strings as they are, numbers (JSON's `CreateTime`, `MsgId`) in decimal.
pub fn text(fields: &Map<String, Value>, name: &str) -> Option<String> {
    match fields.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Message {
    /// Read a message from WeChat's fields.
    pub fn from_fields(fields: &Map<String, Value>) -> Result<Self, MessageError> {
        let get = |name| text(fields, name).unwrap_or_default();
        let openid = get("FromUserName");
        if openid.is_empty() || openid.len() > 128 {
            return Err(MessageError::Field("FromUserName"));
        }
        let msg_type = get("MsgType");
        if msg_type.is_empty() || msg_type.len() > 32 {
            return Err(MessageError::Field("MsgType"));
        }
        let create_time = get("CreateTime");
        if create_time.is_empty() || create_time.len() > 20 {
            return Err(MessageError::Field("CreateTime"));
        }
        let event = get("Event");
        if event.len() > 64 {
            return Err(MessageError::Field("Event"));
        }
        let msg_id = get("MsgId");
        if msg_id.len() > 64 {
            return Err(MessageError::Field("MsgId"));
        }
        // Events carry no MsgId; WeChat's own advice is FromUserName + CreateTime for them
        // (the event name is added so two different events in one second stay distinct).
        let dedup_key = if msg_id.is_empty() || msg_id == "0" {
            format!("ev:{openid}:{create_time}:{event}")
        } else {
            format!("msg:{msg_id}")
        };
        let content = match msg_type.as_str() {
            "text" => get("Content"),
            "image" => json!({
                "external_url": get("PicUrl"),
                "internal_url": "",
                "media_id": get("MediaId"),
            })
            .to_string(),
            "miniprogrampage" => json!({
                "title": get("Title"),
                "appid": get("AppId"),
                "pagepath": get("PagePath"),
                "thumb_url": get("ThumbUrl"),
                "thumb_media_id": get("ThumbMediaId"),
            })
            .to_string(),
            // `user_enter_tempsession` says where the user came from; other events (subscribe
            // messages…) are passed on whole.
            "event" => match text(fields, "SessionFrom") {
                Some(from) => from,
                None => Value::Object(fields.clone()).to_string(),
            },
            _ => Value::Object(fields.clone()).to_string(),
        };
        Ok(Self {
            openid,
            msg_type,
            event,
            content: truncate_chars(content, MAX_CONTENT_CHARS),
            dedup_key,
        })
    }
}

fn truncate_chars(mut text: String, max: usize) -> String {
    if let Some((index, _)) = text.char_indices().nth(max) {
        text.truncate(index);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: Value) -> Result<Message, MessageError> {
        let Value::Object(map) = value else {
            unreachable!()
        };
        Message::from_fields(&map)
    }

    #[test]
    fn each_type_becomes_the_help_desks_content() {
        let base = json!({"ToUserName": "gh_1", "FromUserName": "o1", "CreateTime": 1700000000});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            message(v).unwrap()
        };
        let text = with(json!({"MsgType": "text", "Content": "hi", "MsgId": 42}));
        assert_eq!(
            (text.content.as_str(), text.dedup_key.as_str()),
            ("hi", "msg:42")
        );
        let image =
            with(json!({"MsgType": "image", "PicUrl": "http://p", "MediaId": "m1", "MsgId": "7"}));
        let content: Value = serde_json::from_str(&image.content).unwrap();
        assert_eq!(
            content,
            json!({"external_url": "http://p", "internal_url": "", "media_id": "m1"})
        );
        let event = with(
            json!({"MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "faq"}),
        );
        assert_eq!(event.event, "user_enter_tempsession");
        assert_eq!(event.content, "faq");
        assert_eq!(event.dedup_key, "ev:o1:1700000000:user_enter_tempsession");
    }

    #[test]
    fn a_message_without_sender_type_or_time_is_refused() {
        for missing in ["FromUserName", "MsgType", "CreateTime"] {
            let mut v = json!({"FromUserName": "o1", "MsgType": "text", "CreateTime": 1});
            v.as_object_mut().unwrap().remove(missing);
            assert_eq!(message(v), Err(MessageError::Field(missing)));
        }
    }

    #[test]
    fn long_content_is_cut_at_a_character_boundary() {
        let long = "你".repeat(MAX_CONTENT_CHARS + 5);
        let m = message(
            json!({"FromUserName": "o", "MsgType": "text", "CreateTime": 1, "Content": long}),
        )
        .unwrap();
        assert_eq!(m.content.chars().count(), MAX_CONTENT_CHARS);
    }
}
