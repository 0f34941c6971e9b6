//! End-to-end tests over real sockets and real mTLS: one test binary (each extra binary is
//! another full link on a 2-core machine).

mod support;

mod admin;
mod binary;
mod cache;
mod cache_modes;
mod check;
mod demo;
mod faults;
mod fuzz_corpus;
mod http1_pool;
mod identity;
mod providers;
mod proxy;
mod recovery;
mod reload;
mod token;
mod upstream;
mod webhook;
