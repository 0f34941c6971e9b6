//! What the shared cache stores and how: the v2 key layout (one hash tag per token, so the
//! value, the lock and the scripts stay in one cluster slot in every mode), the encryption
//! key and the sealed value (AES-256-GCM, key id, cache key, version and expiry bound as
//! associated data), and the Lua scripts (write-if-newer, owner-checked release).
//!
//! Owns no connection: [`super::backend`] carries these bytes, [`super`] runs the protocol.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::CachedToken;
use crate::telemetry::hex;

/// The layout version in every key: entries of an older layout are never read and expire.
pub const LAYOUT: &str = "pix-auth-proxy:v2:";

/// The URL with any password replaced, for logs.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}://<credentials>@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The 32-byte encryption key and its public id.
pub struct CacheKey {
    key: LessSafeKey,
    /// First 8 bytes of a hash of the key, hex: tells keys apart without revealing them.
    pub id: String,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl CacheKey {
    /// From 32 raw bytes, or their Base64 (standard or URL-safe, padded or not).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, String> {
        let raw: Vec<u8> = if bytes.len() == 32 {
            bytes.to_vec()
        } else {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| {
                    format!(
                        "must hold 32 raw bytes or their Base64 (found {} bytes)",
                        bytes.len()
                    )
                })?
                .trim();
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| "is neither 32 raw bytes nor Base64".to_owned())?
        };
        if raw.len() != 32 {
            return Err(format!("must decode to 32 bytes, not {}", raw.len()));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &raw)
            .map_err(|_| "not a valid AES-256 key".to_owned())?;
        let mut id_input = b"pix-auth-proxy cache key id\0".to_vec();
        id_input.extend_from_slice(&raw);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            id: hex(&crate::tls::sha256(&id_input)[..8]),
        })
    }

    /// Read the key file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_file_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The key of a token, without the operator's prefix: `pix-auth-proxy:v2:{<sha256>}`, the
/// braces being the hash tag. A new certificate (SPKI) or other scopes is a new key.
pub fn cache_key(
    token_url: &str,
    client_id: &str,
    scope: Option<&str>,
    spki_sha256: &str,
) -> String {
    let mut scopes: Vec<&str> = scope.unwrap_or("").split_whitespace().collect();
    scopes.sort_unstable();
    scopes.dedup();
    let material = format!(
        "{token_url}\0{client_id}\0{}\0{spki_sha256}",
        scopes.join(" ")
    );
    format!(
        "{LAYOUT}{{{}}}",
        hex(&crate::tls::sha256(material.as_bytes()))
    )
}

/// Every name one token uses; all carry the same hash tag, so they share one slot.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The hash holding the sealed value.
    pub value: String,
    /// The renewal lock.
    pub lock: String,
    /// The pub/sub channel of renewal notices.
    pub channel: String,
}

impl Keys {
    /// `prefix` + `base` (from [`cache_key`]) and its `:lock` / `:renewed` siblings.
    pub fn new(prefix: &str, base: &str) -> Self {
        let value = format!("{prefix}{base}");
        Self {
            lock: format!("{value}:lock"),
            channel: format!("{value}:renewed"),
            value,
        }
    }

    /// A probe key under the same prefix, for `check`.
    pub fn probe(prefix: &str, owner: &str) -> Self {
        Self::new(prefix, &format!("{LAYOUT}{{check-{owner}}}"))
    }
}

/// Plaintext inside the ciphertext.
#[derive(Serialize, Deserialize)]
struct Sealed {
    t: String,
    v: u64,
    exp: u64,
    life: u64,
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn aad(key: &CacheKey, cache_key: &str, version: u64, exp_ms: u64) -> Vec<u8> {
    format!("{}\0{cache_key}\0{version}\0{exp_ms}", key.id).into_bytes()
}

/// Encrypt `token` for the entry `cache_key`: key id, then nonce, then ciphertext and tag.
pub fn seal(key: &CacheKey, cache_key: &str, token: &CachedToken) -> Vec<u8> {
    let exp = unix_ms(token.expires_at);
    let plain = serde_json::to_vec(&Sealed {
        t: token.access_token.expose_secret().to_owned(),
        v: token.version,
        exp,
        life: token.lifetime.as_millis() as u64,
    })
    .expect("plain struct serializes");
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("system RNG");
    let mut in_out = zeroize::Zeroizing::new(plain);
    let mut sealed = key.id.as_bytes().to_vec();
    sealed.extend_from_slice(&nonce);
    key.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(key, cache_key, token.version, exp)),
            &mut *in_out,
        )
        .expect("AES-GCM sealing cannot fail for small inputs");
    sealed.extend_from_slice(&in_out);
    sealed
}

/// Decrypt and validate a value; `None` for anything that is not exactly what we sealed.
pub fn open(
    key: &CacheKey,
    cache_key: &str,
    version: u64,
    exp_ms: u64,
    sealed: &[u8],
) -> Option<CachedToken> {
    let rest = sealed.strip_prefix(key.id.as_bytes())?;
    if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return None;
    }
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = zeroize::Zeroizing::new(ct.to_vec());
    let plain = key
        .key
        .open_in_place(
            nonce,
            Aad::from(aad(key, cache_key, version, exp_ms)),
            &mut buf,
        )
        .ok()?;
    let s: Sealed = serde_json::from_slice(plain).ok()?;
    if s.v != version
        || s.exp != exp_ms
        || s.t.is_empty()
        || !s.t.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    Some(CachedToken {
        access_token: SecretString::from(s.t),
        version: s.v,
        expires_at: UNIX_EPOCH + Duration::from_millis(s.exp),
        lifetime: Duration::from_millis(s.life),
    })
}

/// Write `ct` if its version is newer than the stored one (or the stored value is the
/// undecryptable one we saw); set the TTL. Returns 1 if written. One key: one slot.
pub const WRITE_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
local curct = redis.call('HGET', KEYS[1], 'ct')
if cur and tonumber(cur) >= tonumber(ARGV[1]) and not (ARGV[5] ~= '' and curct == ARGV[5]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'exp', ARGV[2], 'ct', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// Release the lock only if we still own it: delete it, or (ARGV[2] > 0 ms) let it expire
/// that much later, which keeps the other replicas off a failing token endpoint meanwhile.
pub const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[2]) > 0 then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The cluster slot of a key (CRC16 of its hash tag), as Redis computes it.
    pub fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &bytes[open + 1..];
                rest.iter()
                    .position(|&b| b == b'}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(bytes);
        crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
    }

    #[test]
    fn key_file_accepts_raw_and_base64_and_rejects_the_rest() {
        let raw = [7u8; 32];
        let a = CacheKey::from_file_bytes(&raw).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b = CacheKey::from_file_bytes(format!("{b64}\n").as_bytes()).unwrap();
        assert_eq!(a.id, b.id);
        assert!(CacheKey::from_file_bytes(b"short").is_err());
        assert!(
            CacheKey::from_file_bytes(
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 16])
                    .as_bytes()
            )
            .is_err()
        );
        assert!(!format!("{a:?}").contains("07070707"));
    }

    #[test]
    fn cache_key_depends_on_certificate_and_sorted_scopes() {
        let k1 = cache_key("https://psp/oauth", "id", Some("b a"), "spki1");
        assert_eq!(
            k1,
            cache_key("https://psp/oauth", "id", Some("a  b"), "spki1")
        );
        assert_ne!(
            k1,
            cache_key("https://psp/oauth", "id", Some("a b"), "spki2")
        );
        assert_ne!(
            k1,
            cache_key("https://psp/oauth", "id2", Some("a b"), "spki1")
        );
        assert!(k1.starts_with("pix-auth-proxy:v2:{"));
        assert!(k1.ends_with('}'));
    }

    #[test]
    fn every_key_of_a_token_shares_one_slot_whatever_the_prefix() {
        let base = cache_key("https://psp/oauth", "id", None, "spki");
        for prefix in ["", "team-a:", "x"] {
            let k = Keys::new(prefix, &base);
            assert!(k.value.starts_with(prefix));
            assert_eq!(slot(&k.value), slot(&k.lock));
            assert_eq!(slot(&k.value), slot(&k.channel));
            assert_eq!(slot(&k.value), slot(&base));
        }
        // Redis' own example: the tag decides.
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn redacted_url_hides_credentials() {
        assert_eq!(
            redacted_url("rediss://:hunter2@redis:6380/0"),
            "rediss://<credentials>@redis:6380/0"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn sealed_values_round_trip_and_any_change_fails_to_open() {
        let key = CacheKey::from_file_bytes(&[9u8; 32]).unwrap();
        let ck = "pix-auth-proxy:v2:{k}";
        let t = CachedToken {
            access_token: SecretString::from("tok-123".to_owned()),
            version: 4,
            expires_at: UNIX_EPOCH + Duration::from_millis(unix_ms(SystemTime::now()) + 60_000),
            lifetime: Duration::from_secs(60),
        };
        let exp = unix_ms(t.expires_at);
        let sealed = seal(&key, ck, &t);
        assert!(
            !sealed.windows(7).any(|w| w == b"tok-123"),
            "plaintext token in the value"
        );
        let back = open(&key, ck, 4, exp, &sealed).unwrap();
        assert_eq!(back.access_token.expose_secret(), "tok-123");
        assert!(
            open(&key, ck, 5, exp, &sealed).is_none(),
            "version is bound"
        );
        assert!(
            open(&key, ck, 4, exp + 1, &sealed).is_none(),
            "expiry is bound"
        );
        assert!(
            open(&key, "other:{k}", 4, exp, &sealed).is_none(),
            "the key (prefix included) is bound"
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&key, ck, 4, exp, &flipped).is_none(), "tag is checked");
        assert_ne!(seal(&key, ck, &t), sealed, "nonces are random");
    }
}
