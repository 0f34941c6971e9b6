//! The provider's extras on every API request ([`ApiExtras`]): a query parameter appended
//! to every query string, fixed headers, and a correlation id where the app sent none.

use http::{HeaderMap, HeaderValue};

use super::ApiExtras;

impl ApiExtras {
    /// `name=value`, form-encoded, to append to every query string.
    pub(crate) fn query_suffix(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        self.query.as_ref().map(|(k, v)| {
            let mut out = String::with_capacity(k.len() + v.expose_secret().len() + 8);
            out.extend(form_urlencoded::byte_serialize(k.as_bytes()));
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(
                v.expose_secret().as_bytes(),
            ));
            out
        })
    }

    /// The provider's extra headers, and a correlation id where the app sent none.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        if let Some(name) = &self.correlation_id {
            if !headers.contains_key(name) {
                let id = uuid::Uuid::new_v4();
                let mut buf = uuid::Uuid::encode_buffer();
                if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
                    headers.insert(name.clone(), v);
                }
            }
        }
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
    }
}
