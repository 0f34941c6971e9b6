//! A mock Pix PSP: the test suite's fixture and, later, the engine of `demo`.
//!
//! Owns: a throwaway PKI ([`pki`]) and an mTLS-only HTTPS server ([`psp`]) with an OAuth2
//! token endpoint and an API that checks bearer tokens and echoes what it received, plus the
//! PSP's webhook side ([`notify`]): a simulated payment is delivered to a webhook over mTLS.

pub mod notify;
mod pix;
pub mod pki;
pub mod psp;

pub use notify::WebhookTarget;
pub use pki::{Leaf, Pki};
pub use psp::{MockPsp, PspSettings, TokenMode};
