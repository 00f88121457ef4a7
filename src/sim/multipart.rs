//! Just enough `multipart/form-data` for the simulator's media upload: find one named field.
//! (mpapi itself only writes multipart bodies, with reqwest.)

/// One form field.
pub struct Field {
    pub file_name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// The field `name` of a `multipart/form-data` body whose `Content-Type` is `content_type`.
pub fn field(content_type: &str, body: &[u8], name: &str) -> Option<Field> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = params.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        (key.trim() == "boundary").then(|| value.trim().trim_matches('"').to_string())
    })?;
    let delimiter = format!("--{boundary}");
    let mut rest = body;
    // Skip the preamble up to the first delimiter.
    rest = &rest[find(rest, delimiter.as_bytes())? + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return None; // closing delimiter: no such field
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let headers_end = find(rest, b"\r\n\r\n")?;
        let headers = std::str::from_utf8(&rest[..headers_end]).ok()?;
        let after_headers = &rest[headers_end + 4..];
        let next = find(after_headers, format!("\r\n{delimiter}").as_bytes())?;
        let data = &after_headers[..next];
        rest = &after_headers[next + 2 + delimiter.len()..];
        let mut field_name = None;
        let mut file_name = String::new();
        let mut part_type = String::from("application/octet-stream");
        for line in headers.split("\r\n") {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("content-disposition") {
                field_name = parameter(value, "name");
                file_name = parameter(value, "filename").unwrap_or_default();
            } else if key.trim().eq_ignore_ascii_case("content-type") {
                part_type = value.trim().to_string();
            }
        }
        if field_name.as_deref() == Some(name) {
            return Some(Field {
                file_name,
                content_type: part_type,
                data: data.to_vec(),
            });
        }
    }
}

/// `name="value"` from a header value's parameters.
fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|param| {
        let (key, value) = param.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_field_is_found_with_its_file_name_and_type() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"media\"; filename=\"cat.png\"\r\n\
Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\r\n--XyZ--\r\n";
        let field = field("multipart/form-data; boundary=XyZ", body, "media").unwrap();
        assert_eq!(field.file_name, "cat.png");
        assert_eq!(field.content_type, "image/png");
        assert_eq!(field.data, b"\x89PNG\r\n\x1a\n");
        assert!(super::field("multipart/form-data; boundary=XyZ", body, "nope").is_none());
        assert!(super::field("application/json", body, "media").is_none());
    }
}
