//! How a PSP edge says it refused our client certificate *after* the TLS handshake.
//!
//! The most common PSP edge, nginx with `ssl_verify_client on`, completes the handshake with
//! a certificate it does not trust (or an expired one) and answers every request with a 400
//! whose body names the problem; gateways in front of token endpoints answer 403 naming the
//! certificate, or 495/496 (nginx's own codes, when a gateway lets them through). Taking any
//! such answer for "certificate accepted" tells an operator the opposite of the truth.
//! A refusal *during* the handshake is a TLS alert; [`alert_refusal`] recognises those.

use http::StatusCode;

/// Why the PSP refused our client certificate, in words an operator can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate was presented but is not trusted (unknown CA, expired, revoked).
    NotTrusted,
    /// The edge says no certificate was sent.
    NotSent,
    /// The edge answered 403 naming the certificate (not registered, wrong environment).
    Forbidden,
    /// A TLS alert in the handshake that refers to our certificate.
    Alert,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotTrusted => {
                "the PSP refused our client certificate: not trusted by its CA (or expired)"
            }
            Refusal::NotSent => {
                "the PSP refused the connection: it says no client certificate was sent"
            }
            Refusal::Forbidden => {
                "the PSP refused our client certificate (403): is it registered with the PSP, for this environment?"
            }
            Refusal::Alert => "the PSP refused our client certificate during the TLS handshake",
        })
    }
}

/// Most of a response body we look at; nginx's error pages are under 300 bytes.
pub const SNIFF_BYTES: usize = 4096;

/// Whether an HTTP answer (`status` and the start of its body) is an edge refusing our
/// client certificate.
pub fn http_refusal(status: StatusCode, body: &[u8]) -> Option<Refusal> {
    let body = &body[..body.len().min(SNIFF_BYTES)];
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    match status.as_u16() {
        // nginx: "400 No required SSL certificate was sent" (`ssl_verify_client on`).
        400 | 496 if text.contains("no required ssl certificate was sent") => {
            Some(Refusal::NotSent)
        }
        // nginx: "400 The SSL certificate error" (untrusted, expired, revoked).
        400 | 495 if text.contains("the ssl certificate error") => Some(Refusal::NotTrusted),
        495 => Some(Refusal::NotTrusted),
        496 => Some(Refusal::NotSent),
        403 if text.contains("certificate") => Some(Refusal::Forbidden),
        _ => None,
    }
}

/// Whether a TLS alert the PSP sent refers to our certificate.
pub fn alert_refusal(err: &rustls::Error) -> Option<Refusal> {
    use rustls::AlertDescription as A;
    match err {
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::AccessDenied,
        ) => Some(Refusal::Alert),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTRUSTED: &str = "<html>\r\n<head><title>400 The SSL certificate error</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The SSL certificate error</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    const NOT_SENT: &str = "<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

    #[test]
    fn nginx_refusal_pages_and_certificate_403s_are_recognised() {
        let s = StatusCode::from_u16;
        assert_eq!(
            http_refusal(s(400).unwrap(), UNTRUSTED.as_bytes()),
            Some(Refusal::NotTrusted)
        );
        assert_eq!(
            http_refusal(s(400).unwrap(), NOT_SENT.as_bytes()),
            Some(Refusal::NotSent)
        );
        assert_eq!(
            http_refusal(s(495).unwrap(), b""),
            Some(Refusal::NotTrusted)
        );
        assert_eq!(
            http_refusal(
                s(403).unwrap(),
                b"{\"message\":\"Client certificate not registered\"}"
            ),
            Some(Refusal::Forbidden)
        );
    }

    #[test]
    fn ordinary_errors_are_not_refusals() {
        let s = |c| StatusCode::from_u16(c).unwrap();
        assert_eq!(
            http_refusal(s(400), b"{\"error\":\"invalid_request\"}"),
            None
        );
        assert_eq!(
            http_refusal(s(403), b"{\"error\":\"insufficient_scope\"}"),
            None
        );
        assert_eq!(http_refusal(s(401), UNTRUSTED.as_bytes()), None);
        assert_eq!(http_refusal(s(200), UNTRUSTED.as_bytes()), None);
    }
}
