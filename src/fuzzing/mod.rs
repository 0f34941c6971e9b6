//! Entry points for the fuzz targets in `fuzz/` and for the corpus-replay test
//! (`tests/it/fuzz_corpus.rs`). Not part of the sidecar's API.
//!
//! Owns: one function per target, each taking the fuzzer's bytes, feeding them to the real
//! parsing code and asserting the invariant that code promises. None of them panics by
//! design: a panic is a finding. [`TARGETS`] names them, so the replay test and the fuzz
//! targets agree on which corpus directory belongs to which function.

mod args;
mod proxy;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, StatusCode, Uri, Version};
use secrecy::{ExposeSecret, SecretString};

use crate::proxy::rewrite::{self, UpstreamTarget};
use crate::token::cache::protocol as cache;
use crate::token::cache::{CacheKey, CachedToken};
use crate::token::endpoint::{self, MAX_LIFETIME, MIN_LIFETIME};

pub use args::cli_args;
pub use proxy::proxy_connection;

/// A target's entry point: the fuzzer's bytes in, a panic out if an invariant breaks.
pub type EntryPoint = fn(&[u8]);

/// Every target: the name of its `fuzz/fuzz_targets/` file and `fuzz/corpus/` directory,
/// and its entry point.
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("token_response", token_response),
    ("cache_value", cache_value),
    ("rewrite", rewrite),
    ("identity", identity),
    ("cli_args", cli_args),
    ("proxy_connection", proxy_connection),
];

/// The client secret the token target pretends to have sent; it must never show in an error.
pub const FUZZ_CLIENT_SECRET: &str = "fuzz-client-secret-6f1d";

/// Wall-clock "now" of the token target (2025-06-15T12:00:00Z), so a JWT `exp` in the corpus
/// means the same lifetime on every run.
pub const FUZZ_NOW_UNIX: u64 = 1_750_000_000;

/// Split off the first byte as a selector.
fn split_first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, &[]),
    }
}

/// Token response: the first byte picks the status (200, 201 or another), the rest is the
/// body. A granted token is visible ASCII, makes a valid `Authorization` value, and its
/// lifetime is within [`MIN_LIFETIME`]..=[`MAX_LIFETIME`]; a refusal has a known reason
/// label and never carries the client secret.
pub fn token_response(data: &[u8]) {
    let (selector, body) = split_first(data);
    let status = match selector % 8 {
        0..=3 => StatusCode::OK,
        4 => StatusCode::CREATED,
        5 => StatusCode::BAD_REQUEST,
        6 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::from_u16(100 + u16::from(selector) * 2).unwrap_or(StatusCode::OK),
    };
    let now = UNIX_EPOCH + Duration::from_secs(FUZZ_NOW_UNIX);
    let secret = SecretString::from(FUZZ_CLIENT_SECRET);
    match endpoint::parse_response(status, body, now, Some(&secret)) {
        Ok((token, lifetime, _scope)) => {
            assert!(status == StatusCode::OK || status == StatusCode::CREATED);
            let token = token.expose_secret();
            assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
            assert!(
                (MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime),
                "lifetime {lifetime:?} out of bounds"
            );
            let injected = crate::token::Token::new(
                token,
                1,
                tokio::time::Instant::now(),
                lifetime,
                Duration::from_secs(15),
            );
            assert!(injected.is_ok(), "a granted token must make a header value");
        }
        Err(e) => {
            const REASONS: &[&str] = &[
                "status",
                "oauth_error",
                "not_json",
                "invalid_token",
                "token_type",
                "expires_in",
            ];
            assert!(REASONS.contains(&e.reason()), "reason {}", e.reason());
            let text = e.to_string();
            assert!(
                !text.contains(FUZZ_CLIENT_SECRET),
                "secret in error: {text}"
            );
        }
    }
}

/// The 32-byte key the cache target seals with.
const FUZZ_CACHE_KEY: [u8; 32] = [0x42; 32];
/// A second key: nothing sealed under the first may open under it.
const OTHER_CACHE_KEY: [u8; 32] = [0x43; 32];
/// The Redis key the cache target's values are bound to.
const FUZZ_CACHE_REDIS_KEY: &str = "pix-auth-proxy:v1:fuzz";

fn le_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

fn keys() -> (CacheKey, CacheKey) {
    (
        CacheKey::from_file_bytes(&FUZZ_CACHE_KEY).expect("32 bytes are a key"),
        CacheKey::from_file_bytes(&OTHER_CACHE_KEY).expect("32 bytes are a key"),
    )
}

/// The cache target's input for a value the real encoder sealed: selector 0, version,
/// expiry (ms), then the stored ciphertext. Used to write the seed corpus.
pub fn sealed_cache_input(token: &str, version: u64, exp_ms: u64, lifetime_ms: u64) -> Vec<u8> {
    let (key, _) = keys();
    let sealed = cache::seal(
        &key,
        FUZZ_CACHE_REDIS_KEY,
        &CachedToken {
            access_token: SecretString::from(token),
            version,
            expires_at: UNIX_EPOCH + Duration::from_millis(exp_ms),
            lifetime: Duration::from_millis(lifetime_ms),
        },
    );
    let mut out = vec![0u8];
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&exp_ms.to_le_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// Shared-cache values. Selector `% 3`:
/// 0. `version(8) exp_ms(8) stored-bytes`: decode as read from Redis. A value that opens
///    carries those fields and a visible-ASCII token, and never opens under another key or
///    another Redis key.
/// 1. `version(8) exp_ms(8) life_ms(8) flip(2) token`: seal with the real encoder, then it
///    opens back to the same token (if the token is injectable at all) and fails to open with
///    any field, the key, the Redis key or one bit of the value changed.
/// 2. a key file: accepted only as 32 bytes (raw or Base64), with a 16-hex-digit id.
pub fn cache_value(data: &[u8]) {
    let (selector, rest) = split_first(data);
    let (key, other) = keys();
    match selector % 3 {
        0 => {
            let version = le_u64(rest);
            let exp = le_u64(rest.get(8..).unwrap_or_default());
            let stored = rest.get(16..).unwrap_or_default();
            if let Some(t) = cache::open(&key, FUZZ_CACHE_REDIS_KEY, version, exp, stored) {
                assert_eq!(t.version, version);
                let token = t.access_token.expose_secret();
                assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
            }
            assert!(cache::open(&other, FUZZ_CACHE_REDIS_KEY, version, exp, stored).is_none());
            assert!(cache::open(&key, "pix-auth-proxy:v1:other", version, exp, stored).is_none());
        }
        1 => {
            let version = le_u64(rest);
            let exp = le_u64(rest.get(8..).unwrap_or_default());
            let life = le_u64(rest.get(16..).unwrap_or_default());
            let flip = rest
                .get(24..26)
                .map_or(0, |b| usize::from(b[0]) << 8 | usize::from(b[1]));
            let token = String::from_utf8_lossy(rest.get(26..).unwrap_or_default()).into_owned();
            // Expiry and lifetime as the refresher would write them: milliseconds that
            // survive the round trip through `SystemTime` and `Duration`.
            let exp = exp % (1 << 48);
            let t = CachedToken {
                access_token: SecretString::from(token.clone()),
                version,
                expires_at: UNIX_EPOCH + Duration::from_millis(exp),
                lifetime: Duration::from_millis(life),
            };
            let sealed = cache::seal(&key, FUZZ_CACHE_REDIS_KEY, &t);
            // The stored value starts with the public key id; the rest must not hold the token.
            let secret_part = &sealed[key.id.len()..];
            assert!(
                token.len() < 8
                    || !secret_part
                        .windows(token.len())
                        .any(|w| w == token.as_bytes()),
                "plaintext token in the stored value"
            );
            let opened = cache::open(&key, FUZZ_CACHE_REDIS_KEY, version, exp, &sealed);
            let injectable = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
            assert_eq!(opened.is_some(), injectable, "round trip of {token:?}");
            if let Some(o) = opened {
                assert_eq!(o.access_token.expose_secret(), token);
                assert_eq!(o.version, version);
                assert_eq!(o.expires_at, t.expires_at);
                assert_eq!(o.lifetime, t.lifetime);
            }
            let open = |k: &CacheKey, rk: &str, v: u64, e: u64, s: &[u8]| {
                cache::open(k, rk, v, e, s).is_some()
            };
            assert!(!open(&other, FUZZ_CACHE_REDIS_KEY, version, exp, &sealed));
            assert!(!open(
                &key,
                "pix-auth-proxy:v1:other",
                version,
                exp,
                &sealed
            ));
            assert!(!open(&key, FUZZ_CACHE_REDIS_KEY, version ^ 1, exp, &sealed));
            assert!(!open(&key, FUZZ_CACHE_REDIS_KEY, version, exp ^ 1, &sealed));
            let mut flipped = sealed.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 1 << (flip % 8);
            assert!(!open(&key, FUZZ_CACHE_REDIS_KEY, version, exp, &flipped));
            assert!(!open(
                &key,
                FUZZ_CACHE_REDIS_KEY,
                version,
                exp,
                &sealed[..sealed.len() - 1]
            ));
        }
        _ => {
            if let Ok(k) = CacheKey::from_file_bytes(rest) {
                assert_eq!(k.id.len(), 16);
                assert!(k.id.bytes().all(|b| b.is_ascii_hexdigit()));
                let again = CacheKey::from_file_bytes(rest).expect("same bytes, same answer");
                assert_eq!(again.id, k.id);
            }
        }
    }
}

fn method_for(selector: u8) -> Method {
    match selector % 8 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        3 => Method::PATCH,
        4 => Method::DELETE,
        5 => Method::OPTIONS,
        6 => Method::CONNECT,
        _ => Method::HEAD,
    }
}

/// The request-target rewrite and header hygiene. Input: a selector byte (method, version,
/// whether a query parameter is added), then `\n`-separated lines: the upstream base URL,
/// the app's request target, the extra query value, and `name: value` header lines.
///
/// Checks: a rewritten URI keeps the upstream's scheme and authority (also after being
/// printed and parsed again, as it is sent), its path starts with the base path and its
/// path and query are exactly base path + the app's path and query (+ the extra
/// parameter); an accepted absolute-form authority is the upstream's or ours; cleaned
/// headers hold no hop-by-hop header, no `Host`/`Authorization`, nothing `Connection` named.
pub fn rewrite(data: &[u8]) {
    let (selector, rest) = split_first(data);
    let mut lines = rest.split(|b| *b == b'\n');
    let base = lines.next().unwrap_or_default();
    let incoming = lines.next().unwrap_or_default();
    let extra_value = lines.next().unwrap_or_default();
    let target = Uri::try_from(base)
        .ok()
        .and_then(|u| UpstreamTarget::new(&u).map(|t| (u, t)));
    let (base, target) = match target {
        Some(t) => t,
        None => {
            let u = Uri::from_static("https://psp.example:8443/pix/v2/");
            let t = UpstreamTarget::new(&u).expect("static base is absolute");
            (u, t)
        }
    };
    let method = method_for(selector);
    let version = if selector & 0x10 == 0 {
        Version::HTTP_11
    } else {
        Version::HTTP_2
    };
    let extra = (selector & 0x20 != 0).then(|| {
        let mut q: String = form_urlencoded::byte_serialize(b"gw-dev-app-key").collect();
        q.push('=');
        q.extend(form_urlencoded::byte_serialize(extra_value));
        q
    });
    if let Ok(incoming) = Uri::try_from(incoming) {
        check_uri(
            &base,
            &target,
            &method,
            version,
            &incoming,
            extra.as_deref(),
        );
    }
    check_headers(lines);
}

fn check_uri(
    base: &Uri,
    target: &UpstreamTarget,
    method: &Method,
    version: Version,
    incoming: &Uri,
    extra: Option<&str>,
) {
    let forbidden = rewrite::forbidden_target(method, version, incoming);
    if method == Method::CONNECT {
        assert!(forbidden.is_some(), "CONNECT must be refused");
    }
    let own = [Authority::from_static("127.0.0.1:8080")];
    if let Some(a) = incoming.authority() {
        if target.accepts_authority(a, &own) {
            let host = a.host();
            assert!(
                host.eq_ignore_ascii_case(target.authority().host())
                    || host.eq_ignore_ascii_case(own[0].host()),
                "accepted foreign authority {a}"
            );
        }
    }
    let Ok(out) = target.uri_for(incoming, extra) else {
        return;
    };
    assert_eq!(out.scheme(), base.scheme());
    assert_eq!(out.authority(), base.authority());
    let base_path = base.path().trim_end_matches('/');
    assert!(
        out.path().starts_with(base_path),
        "{out} outside {base_path}"
    );
    let pq = incoming.path_and_query().map_or("/", |p| p.as_str());
    let pq = if pq == "*" { "/" } else { pq };
    let mut expected = base_path.to_owned();
    if !pq.starts_with('/') {
        expected.push('/');
    }
    expected.push_str(pq);
    if let Some(q) = extra {
        match incoming.query() {
            None => expected.push('?'),
            Some("") => {}
            Some(_) => expected.push('&'),
        }
        expected.push_str(q);
    }
    if base_path.is_empty() && extra.is_none() {
        expected = pq.to_owned();
    }
    assert_eq!(
        out.path_and_query().map(|p| p.as_str()),
        Some(expected.as_str())
    );
    // What goes on the wire is the printed URI: it must not name another authority.
    let reparsed: Uri = out.to_string().parse().expect("a built URI parses again");
    assert_eq!(reparsed.authority(), base.authority(), "{out}");
    assert_eq!(reparsed.scheme(), base.scheme());
}

fn check_headers<'a>(lines: impl Iterator<Item = &'a [u8]>) {
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let hop_by_hop = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ];
    let mut request = headers.clone();
    rewrite::clean_request_headers(&mut request);
    let mut response = headers.clone();
    rewrite::clean_response_headers(&mut response);
    for name in hop_by_hop.iter().chain(&listed) {
        assert!(!request.contains_key(name), "request kept {name}");
        assert!(!response.contains_key(name), "response kept {name}");
    }
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
    ] {
        assert!(!request.contains_key(&name), "request kept {name}");
    }
    assert!(!response.contains_key(header::PROXY_AUTHENTICATE));
    // Nothing else is touched.
    for (name, value) in &headers {
        let dropped = hop_by_hop.contains(name) || listed.contains(name);
        if !dropped
            && ![
                header::HOST,
                header::AUTHORIZATION,
                header::PROXY_AUTHORIZATION,
            ]
            .contains(name)
        {
            assert!(
                request.get_all(name).iter().any(|v| v == value),
                "request lost {name}"
            );
        }
    }
}

const CERT_LABEL: &str = "<fuzz cert>";
const KEY_LABEL: &str = "<fuzz key>";

/// Identity loading. Selector even: PEM — the rest is the certificate file, then a NUL
/// byte, then the key file (no NUL: one file holding both, as many PSP portals hand out).
/// Selector odd: PKCS#12 — a length byte, that many password bytes, then the archive.
/// A loaded identity has a chain, a 64-hex-digit SPKI hash and a validity period that does
/// not end before it starts; every error names the file it came from.
pub fn identity(data: &[u8]) {
    let (selector, rest) = split_first(data);
    let result = if selector % 2 == 0 {
        let (cert, key) = match rest.iter().position(|b| *b == 0) {
            Some(nul) => (&rest[..nul], &rest[nul + 1..]),
            None => (rest, rest),
        };
        crate::tls::Identity::from_pem_bytes(cert, key, Path::new(CERT_LABEL), Path::new(KEY_LABEL))
    } else {
        let (len, rest) = split_first(rest);
        let len = usize::from(len).min(rest.len());
        let password = String::from_utf8_lossy(&rest[..len]).into_owned();
        crate::tls::pkcs12::from_bytes(
            &rest[len..],
            &SecretString::from(password),
            Path::new(CERT_LABEL),
        )
    };
    match result {
        Ok(identity) => {
            assert!(!identity.chain().is_empty());
            let info = identity.info();
            assert_eq!(info.spki_sha256.len(), 64);
            // Loading refuses a certificate outside its validity period.
            assert!(info.not_before <= info.not_after);
            assert!(info.not_after + Duration::from_secs(60) >= SystemTime::now());
        }
        Err(crate::tls::TlsError::Rustls(_)) => {}
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(CERT_LABEL) || text.contains(KEY_LABEL),
                "error names no file: {text}"
            );
        }
    }
}
