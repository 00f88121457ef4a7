//! mpapi — the server side of WeChat mini programs, as a Pingora reverse proxy.
//!
//! # Map
//! - [`config`]: the YAML file, validated once into a typed model.
//! - [`server`]: builds the gateway's services; starts one in-process on bound listeners for
//!   tests and benches.
//! - [`process`]: `main`'s process model under Pingora's `Server`: upgrade, signals, reload.
//! - [`tls`]: TLS certificates behind a swappable SNI resolver, checked and reloaded by key.
//! - [`gateway`]: the `ProxyHttp` implementation — the request path.
//! - [`session`]: tokens, the session cache, sliding expiry — the hot path's other half.
//! - [`store`]: users and sessions in SQLite, PostgreSQL or MySQL (sqlx, migrated at start).
//! - [`api`]: native endpoints answered by mpapi itself (`/login`, …).
//! - [`messages`]: customer-service messages pushed by WeChat, forwarded to help desks.
//! - [`wechat`]: the client of WeChat's server API, and its crypto.
//! - [`notify`]: subscribe messages queued by `/notify`, sent by a background dispatcher.
//! - [`sim`]: a WeChat simulator (and an echo upstream) for tests and local development.
//! - [`observe`]: Prometheus metrics, the admin listener's probes, the JSON access log.
//! - [`error`]: the request layer's one error type and its JSON envelope.
//! - [`shutdown`]: the shutdown signal every long-running task watches.
//!
//! # The life of one request
//! `request_filter` routes the path. A native path is answered there and then. `/app/…` names
//! its app by `User-App` (or `?appid=`), its `User-Token` is checked against the session cache
//! (the store only on a miss), and the request goes to the app's next healthy upstream with
//! client-sent identity headers stripped and the session's own injected. Beneath it all, each
//! client connection is timed while a header arrives, while an answer waits to be read and
//! while it waits idle for the next request (`gateway::slow_clients`), and counted under its
//! address's cap when one is set (`gateway::connection_cap`).
//!
//! # Unsafe code
//! Denied everywhere but one function, `gateway::identity::shared_value`, whose invariant is
//! stated there.
#![deny(unsafe_code)]
// The library exists for the binary, its tests and its benches: its documentation is read with
// private items (`cargo doc --document-private-items`), where a module's overview may name the
// private constants and helpers it is built from.
#![allow(rustdoc::private_intra_doc_links)]

/// Every allocation of the process goes through mimalloc rather than the system allocator: a
/// proxied request allocates and frees dozens of small buffers (Pingora's header maps and
/// buffers, ours), and mimalloc's per-thread free lists make each cheaper. Set here, in the
/// library, so the binary, the tests and the benches (the bare pass-through included) all use
/// it. Measured in docs/performance.md. Not under `cargo fuzz` (`cfg(fuzzing)`): the address
/// sanitizer watches the system allocator, and would not see a heap overflow in mimalloc's.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod api;
pub mod config;
pub mod error;
pub mod gateway;
pub mod messages;
pub mod notify;
pub mod observe;
pub mod process;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sim;
pub mod state;
pub mod store;
pub mod tls;
pub mod types;
pub mod wechat;
