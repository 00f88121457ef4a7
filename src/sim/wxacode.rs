//! `wxa/getwxacodeunlimit`: a real (tiny) PNG on success, WeChat's JSON errors otherwise.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{Simulator, wechat_error};

/// An 8×8 black grayscale PNG: small, but a PNG any decoder accepts.
pub const CODE_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x08, 0x08, 0x00, 0x00, 0x00, 0x00, 0xe1, 0x64, 0xe1,
    0x57, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x60, 0xa0, 0x0e, 0x00,
    0x00, 0x00, 0x48, 0x00, 0x01, 0x10, 0x45, 0xef, 0xd2, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Pages the simulated mini program has; `check_path` (default true) refuses others with 41030.
pub const KNOWN_PAGES: &[&str] = &["pages/index/index", "pages/detail/detail"];

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    access_token: String,
}

/// `POST wxa/getwxacodeunlimit?access_token=T`.
pub async fn unlimited(
    State(sim): State<Arc<Simulator>>,
    Query(q): Query<TokenQuery>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(error) = sim.check_access_token(&q.access_token) {
        return Json(error).into_response();
    }
    let scene = body["scene"].as_str().unwrap_or("");
    if scene.is_empty() || scene.chars().count() > 32 {
        return Json(wechat_error(40097, "invalid args: scene")).into_response();
    }
    if body["width"]
        .as_u64()
        .is_some_and(|width| !(280..=1280).contains(&width))
    {
        return Json(wechat_error(40097, "invalid args: width")).into_response();
    }
    let page = body["page"].as_str().unwrap_or("");
    let check_path = body["check_path"].as_bool().unwrap_or(true);
    if !page.is_empty() && check_path && !KNOWN_PAGES.contains(&page) {
        return Json(wechat_error(41030, "invalid page hint")).into_response();
    }
    ([(header::CONTENT_TYPE, "image/png")], CODE_PNG).into_response()
}
