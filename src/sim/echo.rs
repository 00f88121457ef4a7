//! An upstream that answers every request with what it received (method, path, query, headers,
//! body), as JSON. Tests use it as the real backend behind the gateway; `dev.echo_upstream`
//! starts one so a newcomer can see the injected identity headers with curl.

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

/// The echo router.
pub fn router() -> Router {
    Router::new().fallback(echo)
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let mut seen = Map::new();
    for (name, value) in &headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match seen.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            _ => {
                seen.insert(name.as_str().to_string(), Value::Array(vec![value]));
            }
        }
    }
    axum::Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": seen,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// Serve the echo upstream on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}
