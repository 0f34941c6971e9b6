//! The header and URI rules applied to every request and response crossing the proxy.
//!
//! Pure functions: no I/O, unit-tested on their own. The URI rules are here, the header
//! rules in [`headers`].

mod headers;

pub use headers::{
    FramingProblem, clean_request_headers, clean_response_headers, detach_values, framing_problem,
};

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Uri, Version};

/// Where requests go: the upstream's scheme, authority and base path.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    /// Base path without a trailing `/` (empty for the root).
    base_path: String,
}

impl UpstreamTarget {
    /// From a base URL such as `https://api.bb.com.br/pix/v2`. The query, if any, is ignored.
    pub fn new(base: &Uri) -> Option<Self> {
        let scheme = base.scheme()?.clone();
        let authority = base.authority()?.clone();
        let base_path = base.path().trim_end_matches('/').to_owned();
        Some(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// The upstream authority (`host[:port]`).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The upstream URI for an incoming request's path and query, byte for byte, with
    /// `extra_query` (`name=value`, already encoded) appended to the query if given.
    pub fn uri_for(&self, incoming: &Uri, extra_query: Option<&str>) -> Result<Uri, http::Error> {
        let pq = incoming
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        // `OPTIONS *` targets the server as a whole: send it to the base path.
        let pq = if pq == "*" { "/" } else { pq };
        let path_and_query = if self.base_path.is_empty() && extra_query.is_none() {
            PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(pq.as_bytes()))?
        } else {
            let extra_len = extra_query.map_or(0, |q| q.len() + 1);
            let mut joined =
                BytesMut::with_capacity(self.base_path.len() + pq.len() + extra_len + 1);
            joined.extend_from_slice(self.base_path.as_bytes());
            if !pq.starts_with('/') {
                joined.extend_from_slice(b"/");
            }
            joined.extend_from_slice(pq.as_bytes());
            if let Some(q) = extra_query {
                let sep: &[u8] = match incoming.query() {
                    None => b"?",
                    Some("") => b"",
                    Some(_) => b"&",
                };
                joined.extend_from_slice(sep);
                joined.extend_from_slice(q.as_bytes());
            }
            PathAndQuery::from_maybe_shared(joined.freeze())?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// Whether an absolute-form request target may be forwarded: only when it names this
    /// upstream (or `also_ours`, the sidecar's own listener). Anything else would make the
    /// sidecar an open proxy.
    pub fn accepts_authority(&self, requested: &Authority, also_ours: &[Authority]) -> bool {
        let same = |a: &Authority, b: &Authority| {
            a.host().eq_ignore_ascii_case(b.host()) && a.port_u16() == b.port_u16()
        };
        let default_port = |a: &Authority, port: u16| {
            a.host().eq_ignore_ascii_case(self.authority.host())
                && a.port_u16().unwrap_or(port) == self.authority.port_u16().unwrap_or(443)
        };
        same(requested, &self.authority)
            || default_port(requested, 443)
            || also_ours.iter().any(|o| same(requested, o))
    }
}

/// Why a request target is refused.
pub fn forbidden_target(method: &Method, version: Version, uri: &Uri) -> Option<&'static str> {
    if method == Method::CONNECT {
        return Some("CONNECT is not supported: this is not a forward proxy");
    }
    // In HTTP/2 every request carries :authority (the equivalent of Host), so only an
    // HTTP/1 absolute-form target is a proxy request.
    if version < Version::HTTP_2 && uri.authority().is_some() {
        return Some("absolute-form request target");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &'static str) -> UpstreamTarget {
        UpstreamTarget::new(&Uri::from_static(base)).unwrap()
    }

    #[test]
    fn path_and_query_are_joined_byte_for_byte() {
        let t = target("https://api.bb.com.br/pix/v2/");
        let u = t
            .uri_for(
                &Uri::from_static("/cob/abc%2F1?inicio=2024-01-01T00:00:00Z&a=%20b&&x"),
                None,
            )
            .unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.bb.com.br/pix/v2/cob/abc%2F1?inicio=2024-01-01T00:00:00Z&a=%20b&&x"
        );
        let root = target("https://psp.example:8443");
        assert_eq!(
            root.uri_for(&Uri::from_static("/a//b/../c?"), None)
                .unwrap()
                .to_string(),
            "https://psp.example:8443/a//b/../c?"
        );
    }

    #[test]
    fn extra_query_is_appended_after_the_apps_own() {
        let t = target("https://api.bb.com.br/pix/v2");
        let k = Some("gw-dev-app-key=k%2B1");
        let uri = |s: &'static str| t.uri_for(&Uri::from_static(s), k).unwrap().to_string();
        assert_eq!(
            uri("/cob/x"),
            "https://api.bb.com.br/pix/v2/cob/x?gw-dev-app-key=k%2B1"
        );
        assert_eq!(
            uri("/cob?a=1"),
            "https://api.bb.com.br/pix/v2/cob?a=1&gw-dev-app-key=k%2B1"
        );
        assert_eq!(
            uri("/cob?"),
            "https://api.bb.com.br/pix/v2/cob?gw-dev-app-key=k%2B1"
        );
    }

    #[test]
    fn only_the_upstream_authority_is_accepted_in_absolute_form() {
        let t = target("https://psp.example/pix");
        let ours = [Authority::from_static("127.0.0.1:8080")];
        assert!(t.accepts_authority(&Authority::from_static("psp.example"), &ours));
        assert!(t.accepts_authority(&Authority::from_static("PSP.example:443"), &ours));
        assert!(t.accepts_authority(&Authority::from_static("127.0.0.1:8080"), &ours));
        assert!(!t.accepts_authority(&Authority::from_static("evil.example"), &ours));
        assert!(!t.accepts_authority(&Authority::from_static("psp.example:8443"), &ours));
    }

    #[test]
    fn connect_and_http1_absolute_form_are_flagged() {
        assert!(
            forbidden_target(
                &Method::CONNECT,
                Version::HTTP_11,
                &Uri::from_static("evil:443")
            )
            .is_some()
        );
        assert!(
            forbidden_target(
                &Method::GET,
                Version::HTTP_11,
                &Uri::from_static("http://evil/x")
            )
            .is_some()
        );
        assert!(
            forbidden_target(
                &Method::GET,
                Version::HTTP_2,
                &Uri::from_static("http://local/x")
            )
            .is_none()
        );
        assert!(
            forbidden_target(&Method::GET, Version::HTTP_11, &Uri::from_static("/x")).is_none()
        );
    }
}
