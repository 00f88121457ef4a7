//! The upstream behind both proxies: a bare hyper server answering a small fixed JSON body, so
//! that the upstream is never the bottleneck and the bare pass-through and the gateway are
//! measured against exactly the same backend.
//!
//! A request carrying `x-bench-check` is answered with the identity headers it arrived with
//! instead; the bench uses it once, before measuring, to prove the gateway injected all five.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mpapi::gateway::identity::INJECTED;
use serde_json::{Map, Value};

/// The fixed answer: the size of a typical small JSON API answer.
const BODY: &[u8] = br#"{"status":0,"data":{"id":7,"name":"order","items":[1,2,3]}}"#;

/// Accept connections on `listener` until the runtime is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if request.headers().contains_key("x-bench-check") {
        let mut seen = Map::new();
        for name in INJECTED {
            let value = request
                .headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            seen.insert(name.to_string(), value.map_or(Value::Null, Value::String));
        }
        Bytes::from(Value::Object(seen).to_string())
    } else {
        Bytes::from_static(BODY)
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Start the upstream on `runtime`, on a port of its own; returns its address.
pub fn start(runtime: &tokio::runtime::Runtime) -> std::net::SocketAddr {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        addr
    })
}
