//! A small, strict reader for the XML WeChat pushes: `<xml><Name><![CDATA[..]]></Name>…</xml>`.
//!
//! Each element becomes a JSON value so XML and JSON pushes are handled by the same code: text
//! (CDATA and/or character data, entities decoded) becomes a string, an element with child
//! elements becomes an object, and a name repeated among siblings becomes an array. Anything
//! else — attributes, comments, DOCTYPEs, processing instructions other than the prolog, unknown
//! entities, mismatched tags, nesting deeper than [`MAX_DEPTH`] — is refused: WeChat never sends
//! them, and a strict reader has no surprises (no external entities, no entity expansion).

use serde_json::{Map, Value};

/// Deepest nesting accepted (WeChat's subscribe-message events nest three levels).
const MAX_DEPTH: usize = 8;

/// Why a body is not the XML WeChat sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(&'static str);

/// The children of the `<xml>` root, as a JSON object.
pub fn parse(text: &str) -> Result<Map<String, Value>, XmlError> {
    let mut reader = Reader { rest: text };
    reader.skip_whitespace();
    if reader.rest.starts_with("<?xml") {
        let end = reader
            .rest
            .find("?>")
            .ok_or(XmlError("unterminated prolog"))?;
        reader.rest = &reader.rest[end + 2..];
        reader.skip_whitespace();
    }
    let name = reader.open_tag()?;
    if name != "xml" {
        return Err(XmlError("the root element is not <xml>"));
    }
    let root = match reader.content("xml", 1)? {
        Value::Object(map) => map,
        // An empty root, or one holding only whitespace.
        Value::String(text) if text.trim().is_empty() => Map::new(),
        _ => return Err(XmlError("the root holds text")),
    };
    reader.skip_whitespace();
    if !reader.rest.is_empty() {
        return Err(XmlError("content after the root element"));
    }
    Ok(root)
}

struct Reader<'a> {
    rest: &'a str,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// `<Name>` → `Name`. A self-closing `<Name/>` answers `Name/`.
    fn open_tag(&mut self) -> Result<&'a str, XmlError> {
        let inner = self
            .rest
            .strip_prefix('<')
            .ok_or(XmlError("expected an element"))?;
        let end = inner.find('>').ok_or(XmlError("unterminated tag"))?;
        let tag = &inner[..end];
        let name = tag.strip_suffix('/').unwrap_or(tag);
        if !valid_name(name) {
            return Err(XmlError(
                "invalid element name (attributes are not accepted)",
            ));
        }
        self.rest = &inner[end + 1..];
        Ok(tag)
    }

    /// Everything up to and including `</name>`: text or child elements.
    fn content(&mut self, name: &str, depth: usize) -> Result<Value, XmlError> {
        if depth > MAX_DEPTH {
            return Err(XmlError("nested too deeply"));
        }
        let mut text = String::new();
        let mut children: Map<String, Value> = Map::new();
        loop {
            let next = self
                .rest
                .find('<')
                .ok_or(XmlError("unterminated element"))?;
            text.push_str(&decode_entities(&self.rest[..next])?);
            self.rest = &self.rest[next..];
            if let Some(after) = self.rest.strip_prefix("<![CDATA[") {
                let end = after.find("]]>").ok_or(XmlError("unterminated CDATA"))?;
                text.push_str(&after[..end]);
                self.rest = &after[end + 3..];
            } else if let Some(after) = self.rest.strip_prefix("</") {
                let end = after
                    .find('>')
                    .ok_or(XmlError("unterminated closing tag"))?;
                if after[..end].trim_end() != name {
                    return Err(XmlError("mismatched closing tag"));
                }
                self.rest = &after[end + 1..];
                break;
            } else if self.rest.starts_with("<!") || self.rest.starts_with("<?") {
                return Err(XmlError(
                    "comments, DOCTYPEs and instructions are not accepted",
                ));
            } else {
                let tag = self.open_tag()?;
                let (child, value) = match tag.strip_suffix('/') {
                    Some(child) => (child, Value::String(String::new())),
                    None => (tag, self.content(tag, depth + 1)?),
                };
                insert(&mut children, child, value);
            }
        }
        if children.is_empty() {
            Ok(Value::String(text))
        } else if text.trim().is_empty() {
            Ok(Value::Object(children))
        } else {
            Err(XmlError("mixed text and elements"))
        }
    }
}

/// Add a child; a repeated name turns into an array of its values in order.
fn insert(children: &mut Map<String, Value>, name: &str, value: Value) {
    match children.get_mut(name) {
        None => {
            children.insert(name.to_string(), value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Character data with the five predefined entities and numeric references decoded.
fn decode_entities(raw: &str) -> Result<String, XmlError> {
    if raw.contains("]]>") {
        return Err(XmlError("']]>' outside CDATA"));
    }
    if !raw.contains('&') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find(';').ok_or(XmlError("unterminated entity"))?;
        let entity = &after[..end];
        let ch = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => numeric_reference(entity).ok_or(XmlError("unknown entity"))?,
        };
        out.push(ch);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn numeric_reference(entity: &str) -> Option<char> {
    let digits = entity.strip_prefix('#')?;
    let code = match digits
        .strip_prefix('x')
        .or_else(|| digits.strip_prefix('X'))
    {
        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_wechat_text_push_reads_as_its_fields() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName>\n  \
                   <FromUserName><![CDATA[oUser]]></FromUserName><CreateTime>1482048670</CreateTime>\
                   <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[a < b & ]]]]><![CDATA[>]]></Content>\
                   <MsgId>1234567890123456</MsgId></xml>";
        let fields = parse(xml).unwrap();
        assert_eq!(fields["FromUserName"], "oUser");
        assert_eq!(fields["CreateTime"], "1482048670");
        assert_eq!(fields["Content"], "a < b & ]]>");
        assert_eq!(fields["MsgId"], "1234567890123456");
    }

    #[test]
    fn entities_prolog_nesting_repeats_and_empty_elements_are_read() {
        let xml = "<?xml version=\"1.0\"?>\n<xml><A>x &amp; y &#20320;&#x597D;</A><E/>\
                   <Popup><List><Id>1</Id></List><List><Id>2</Id></List></Popup></xml>";
        let fields = parse(xml).unwrap();
        assert_eq!(fields["A"], "x & y 你好");
        assert_eq!(fields["E"], "");
        assert_eq!(fields["Popup"], json!({"List": [{"Id": "1"}, {"Id": "2"}]}));
    }

    #[test]
    fn anything_wechat_does_not_send_is_refused() {
        let bad = [
            "",
            "<root><A>1</A></root>",
            "<xml><A>1</B></xml>",
            "<xml><A x=\"1\">1</A></xml>",
            "<xml><!-- c --><A>1</A></xml>",
            "<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><A>&e;</A></xml>",
            "<xml><A>&e;</A></xml>",
            "<xml><A>1</A></xml><xml/>",
            "<xml><A>1<B>2</B></A></xml>",
            "<xml><A><![CDATA[1</A></xml>",
            "<xml><A>1</A>",
            "<xml>text</xml>",
        ];
        for body in bad {
            assert!(parse(body).is_err(), "accepted: {body}");
        }
        let deep = format!("<xml>{}1{}</xml>", "<a>".repeat(20), "</a>".repeat(20));
        assert!(parse(&deep).is_err());
    }
}
