//! pix-auth-proxy: a sidecar that holds the mTLS identity and the OAuth2 client-credentials
//! token for a Pix PSP API, so that the application beside it speaks plain HTTP.
//!
//! A request travels through the modules in this order:
//!
//! - [`server`]: accepts the app's plaintext connections (HTTP/1.1 and h2c), bounds each
//!   one ([`server::watchdog`]: a first request in time, an idle limit) and drains them on
//!   shutdown; the webhook listener shares its accept loop and bounds.
//! - [`proxy`]: checks the target, rewrites the request (URI, `Host`, hop-by-hop headers,
//!   `Authorization`), sends it upstream, replays it once on a 401, and turns the sidecar's own
//!   failures into RFC 9457 problem bodies.
//! - [`token`]: the lock-free [`token::TokenCell`] the proxy reads, and the refresher task —
//!   the only code that calls the token endpoint.
//! - [`tls`]: the client identity and trust anchors behind every upstream connection.
//!
//! The inbound direction has its own module: [`webhook`] terminates the PSP's mTLS webhook
//! calls, checks who is calling and hands the notification to the app over plain HTTP.
//!
//! Around them: [`cli`] and [`config`] turn flags into a validated [`config::Config`],
//! [`sidecar`] wires the pieces together, [`telemetry`] sets up logs and redaction, and
//! [`sandbox`] is the mock PSP used by the tests and by `demo`.

// One exception, in `server::slice`: the two system calls that ask the kernel for a
// scheduler slice, which no maintained crate wraps.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod generation;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod sandbox;
pub mod server;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod webhook;
