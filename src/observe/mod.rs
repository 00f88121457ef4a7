//! What an operator sees of a running gateway: Prometheus metrics ([`metrics`]), the admin
//! listener with its probes ([`admin`]) and the JSON access log ([`access_log`]).

pub mod access_log;
pub mod admin;
pub mod metrics;

pub use access_log::{AccessLog, AccessLogTarget, AccessRecord};
pub use metrics::{Lookup, Metrics, RouteLabel, SendOutcome};
