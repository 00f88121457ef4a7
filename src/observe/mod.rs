//! What an operator sees of a running gateway: Prometheus metrics ([`metrics`]), the admin
//! listener with its probes ([`admin`]), the JSON access log ([`access_log`]) and Pingora's own
//! log lines ([`pingora_log`]).

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod pingora_log;

pub use access_log::{AccessLog, AccessLogTarget, AccessRecord};
pub use metrics::{Lookup, Metrics, RouteLabel, SendOutcome};
