//! Integration tests: every test drives a real gateway over HTTP, with a real database, the
//! WeChat simulator over real HTTP and a real echo upstream. One binary, to link once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod bad_input;
mod cluster;
mod config;
mod credentials;
mod forwarded;
mod hardening;
mod helpdesk;
mod login;
mod logout;
mod message_reply;
mod messages;
mod mobile;
mod notify;
mod observability;
mod process;
mod proxy;
mod reload;
mod resilience;
mod sessions;
mod slow_clients;
mod systemd;
mod tls;
mod upstreams;
mod wxcode;
