//! Which notification a webhook request is, from its path and query.
//!
//! The PSP appends the event's suffix to the registered URL literally (BCB API Pix): a URL
//! registered as `https://host/hook` receives `/hook/pix`, one registered with a trailing
//! slash receives `/hook//pix`, and one registered as `https://host/hook?ignorar=` receives
//! `/hook?ignorar=/pix` (the query swallowed the suffix). All of them are recognised here.

/// The kind of notification, forwarded to the app as `X-Pix-Webhook-Event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A received Pix (`/pix`).
    Pix,
    /// Pix Automático recurrence (`/rec`).
    Rec,
    /// Pix Automático charge (`/cobr`).
    Cobr,
    /// The bare registered path: a registration test.
    Probe,
}

impl Event {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Pix => "pix",
            Event::Rec => "rec",
            Event::Cobr => "cobr",
            Event::Probe => "probe",
        }
    }

    fn from_suffix(s: &str) -> Option<Self> {
        match s {
            "pix" => Some(Event::Pix),
            "rec" => Some(Event::Rec),
            "cobr" => Some(Event::Cobr),
            _ => None,
        }
    }
}

/// The event for `path` + `query` under the registered `base` (no trailing slash; `""` for
/// `/`), or `None` when the request is not for the webhook (404).
pub fn recognise(base: &str, path: &str, query: Option<&str>) -> Option<Event> {
    let rest = path.strip_prefix(base)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        // `/hookx` is not under `/hook`.
        return None;
    }
    let suffix = rest.trim_matches('/');
    if !suffix.is_empty() {
        return Event::from_suffix(suffix);
    }
    Some(query.and_then(swallowed_suffix).unwrap_or(Event::Probe))
}

/// The suffix a query string swallowed (`ignorar=/pix`, also percent-encoded).
fn swallowed_suffix(query: &str) -> Option<Event> {
    let last = query.rsplit('&').next()?;
    let value = last.split_once('=').map_or(last, |(_, v)| v);
    let decoded: String = form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    let suffix = decoded.strip_prefix('/')?.trim_start_matches('/');
    Event::from_suffix(suffix.trim_end_matches('/'))
}

/// `query` without the parameters that belong to the sidecar (`hmac`) or to the PSP's URL
/// trick (`ignorar`); `None` when nothing is left.
pub fn app_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !p.is_empty() && name != "hmac" && name != "ignorar"
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The value of the `hmac` query parameter, percent-decoded.
pub fn hmac_param(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "hmac")
        // With `?hmac=X&ignorar=` the PSP may append `/pix` to the last value only, but a
        // URL registered as `?hmac=X` receives `?hmac=X/pix`: the suffix is not the secret.
        .map(|(_, v)| {
            let v = v.into_owned();
            for s in ["/pix", "/rec", "/cobr"] {
                if let Some(stripped) = v.strip_suffix(s) {
                    return stripped.trim_end_matches('/').to_owned();
                }
            }
            v
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_doubled_slashes_and_swallowing_queries() {
        let cases: &[(&str, &str, Option<&str>, Option<Event>)] = &[
            ("/hook", "/hook/pix", None, Some(Event::Pix)),
            ("/hook", "/hook//pix", None, Some(Event::Pix)),
            ("/hook", "/hook/rec", None, Some(Event::Rec)),
            ("/hook", "/hook/cobr", None, Some(Event::Cobr)),
            ("/hook", "/hook", None, Some(Event::Probe)),
            ("/hook", "/hook/", None, Some(Event::Probe)),
            ("/hook", "/hook", Some("ignorar=/pix"), Some(Event::Pix)),
            ("/hook", "/hook", Some("ignorar=%2Fcobr"), Some(Event::Cobr)),
            (
                "/hook",
                "/hook",
                Some("hmac=x&ignorar=/rec"),
                Some(Event::Rec),
            ),
            ("/hook", "/hookx/pix", None, None),
            ("/hook", "/hook/other", None, None),
            ("/hook", "/other/pix", None, None),
            ("", "/pix", None, Some(Event::Pix)),
            ("", "//pix", None, Some(Event::Pix)),
            ("", "/", None, Some(Event::Probe)),
            ("", "/", Some("ignorar=/pix"), Some(Event::Pix)),
        ];
        for (base, path, query, want) in cases {
            assert_eq!(
                recognise(base, path, *query),
                *want,
                "{base} {path} {query:?}"
            );
        }
    }

    #[test]
    fn sidecar_parameters_never_reach_the_app() {
        assert_eq!(app_query(Some("hmac=s&ignorar=/pix")), None);
        assert_eq!(app_query(Some("a=1&hmac=s")), Some("a=1".into()));
        assert_eq!(
            hmac_param(Some("hmac=s3%2B&ignorar=/pix")),
            Some("s3+".into())
        );
        assert_eq!(hmac_param(Some("hmac=s3/pix")), Some("s3".into()));
        assert_eq!(hmac_param(Some("a=1")), None);
    }
}
