//! PSP presets: the URLs and the token-request dialect of each Pix PSP, as data.
//!
//! Owns: one table, [`PRESETS`]. Every field is a default a flag can override; nothing else
//! in the code branches on a PSP's name. Facts come from the PSPs' public documentation and
//! widely used client code; [`Preset::source`] says how each row was checked.

use crate::token::endpoint::{ClientAuth, TokenEncoding};

/// Production or sandbox (homologação).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Environment {
    /// The PSP's production endpoints.
    Production,
    /// The PSP's sandbox / homologação endpoints.
    Sandbox,
}

/// API base URL and token endpoint of one environment.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// API base URL (may carry a path prefix).
    pub upstream: &'static str,
    /// OAuth2 token endpoint.
    pub token_url: &'static str,
}

/// Where `grant_type=client_credentials` goes in the token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantTypeIn {
    /// In the body, as RFC 6749 says.
    Body,
    /// In the token URL's query string (Santander).
    Query,
}

/// A header the sidecar adds to every API call (never to the token request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiHeader {
    /// A fresh UUID v4 per request, unless the app already sent the header.
    CorrelationId(&'static str),
    /// The OAuth2 client id.
    ClientId(&'static str),
}

/// One PSP's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name given to `--provider`.
    pub name: &'static str,
    /// Human name.
    pub title: &'static str,
    /// Production endpoints (`None` only for `custom`).
    pub production: Option<Endpoints>,
    /// Sandbox endpoints, where the PSP has one.
    pub sandbox: Option<Endpoints>,
    /// Client authentication at the token endpoint.
    pub client_auth: ClientAuth,
    /// Token request body encoding.
    pub encoding: TokenEncoding,
    /// Where `grant_type` goes.
    pub grant_type: GrantTypeIn,
    /// Scope requested when `--scope` is not given (`None`: no scope is sent).
    pub default_scope: Option<&'static str>,
    /// Query parameter carrying the developer application key on every API call
    /// (`--developer-key-file`), if the PSP wants one.
    pub developer_key_param: Option<&'static str>,
    /// Headers added to every API call.
    pub api_headers: &'static [ApiHeader],
    /// Never negotiate HTTP/2 with this PSP.
    pub http1_only: bool,
    /// How the row was checked.
    pub source: &'static str,
}

impl Preset {
    /// Endpoints of `env`, if the PSP has that environment.
    pub fn endpoints(&self, env: Environment) -> Option<Endpoints> {
        match env {
            Environment::Production => self.production,
            Environment::Sandbox => self.sandbox,
        }
    }

    /// One-line summary of the API extras.
    pub fn extras(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.grant_type == GrantTypeIn::Query {
            parts.push("`grant_type` in the token URL's query".into());
        }
        if let Some(p) = self.developer_key_param {
            parts.push(format!(
                "`{p}=<key>` query on API calls (`--developer-key-file`)"
            ));
        }
        for h in self.api_headers {
            parts.push(match h {
                ApiHeader::CorrelationId(n) => format!("fresh `{n}` UUID per request"),
                ApiHeader::ClientId(n) => format!("`{n}` header on API calls"),
            });
        }
        if self.http1_only {
            parts.push("HTTP/1.1 only".into());
        }
        parts.join("; ")
    }
}

/// Look a preset up by name.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The presets, one row per PSP.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "pagstar",
        title: "Pagstar",
        production: Some(Endpoints {
            upstream: "https://api.pix.pagstar.com",
            token_url: "https://api.pix.pagstar.com/oauth/token",
        }),
        sandbox: None,
        client_auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "PSP authentication guide (token request and response shape); answers 200 or 201",
    },
    Preset {
        name: "efi",
        title: "Efí (Gerencianet)",
        production: Some(Endpoints {
            upstream: "https://pix.api.efipay.com.br",
            token_url: "https://pix.api.efipay.com.br/oauth/token",
        }),
        sandbox: Some(Endpoints {
            upstream: "https://pix-h.api.efipay.com.br",
            token_url: "https://pix-h.api.efipay.com.br/oauth/token",
        }),
        client_auth: ClientAuth::Basic,
        encoding: TokenEncoding::Json,
        grant_type: GrantTypeIn::Body,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "hosts, Basic auth and JSON body corroborated by the PSP's public SDK and client code",
    },
    Preset {
        name: "bb",
        title: "Banco do Brasil",
        production: Some(Endpoints {
            upstream: "https://api-pix.bb.com.br/pix/v2",
            token_url: "https://oauth.bb.com.br/oauth/token",
        }),
        sandbox: Some(Endpoints {
            upstream: "https://api.hm.bb.com.br/pix/v2",
            token_url: "https://oauth.hm.bb.com.br/oauth/token",
        }),
        client_auth: ClientAuth::Basic,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: Some("cob.read cob.write pix.read pix.write"),
        developer_key_param: Some("gw-dev-app-key"),
        api_headers: &[],
        http1_only: false,
        source: "token hosts and gw-dev-app-key corroborated by public client code; production API host per current client code (api-pix.bb.com.br)",
    },
    Preset {
        name: "itau",
        title: "Itaú",
        production: Some(Endpoints {
            upstream: "https://secure.api.itau/pix_recebimentos/v2",
            token_url: "https://sts.itau.com.br/as/token.oauth2",
        }),
        sandbox: None,
        client_auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[ApiHeader::CorrelationId("x-correlationID")],
        http1_only: false,
        source: "from the product's PSP table; not verified here",
    },
    Preset {
        name: "sicoob",
        title: "Sicoob",
        production: Some(Endpoints {
            upstream: "https://api.sicoob.com.br/pix/api/v2",
            token_url: "https://auth.sicoob.com.br/auth/realms/cooperado/protocol/openid-connect/token",
        }),
        sandbox: None,
        client_auth: ClientAuth::None,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: Some("cob.read cob.write pix.read pix.write"),
        developer_key_param: None,
        api_headers: &[ApiHeader::ClientId("client_id")],
        http1_only: false,
        source: "client_id-only token request (certificate authenticates) corroborated by public client code",
    },
    Preset {
        name: "inter",
        title: "Banco Inter",
        production: Some(Endpoints {
            upstream: "https://cdpj.partners.bancointer.com.br/pix/v2",
            token_url: "https://cdpj.partners.bancointer.com.br/oauth/v2/token",
        }),
        sandbox: None,
        client_auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: Some("cob.read cob.write pix.read"),
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "token and API URLs corroborated by public SDK code",
    },
    Preset {
        name: "santander",
        title: "Santander",
        production: Some(Endpoints {
            upstream: "https://trust-pix.santander.com.br/api/v1",
            token_url: "https://trust-pix.santander.com.br/oauth/token",
        }),
        sandbox: Some(Endpoints {
            upstream: "https://trust-pix-h.santander.com.br/api/v1",
            token_url: "https://trust-pix-h.santander.com.br/oauth/token",
        }),
        client_auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Query,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "from the product's PSP table; not verified here",
    },
    Preset {
        name: "bradesco",
        title: "Bradesco",
        production: Some(Endpoints {
            upstream: "https://qrpix.bradesco.com.br/v2",
            token_url: "https://qrpix.bradesco.com.br/oauth/token",
        }),
        sandbox: Some(Endpoints {
            upstream: "https://qrpix-h.bradesco.com.br/v2",
            token_url: "https://qrpix-h.bradesco.com.br/oauth/token",
        }),
        client_auth: ClientAuth::Basic,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[],
        http1_only: true,
        source: "from the product's PSP table; not verified here",
    },
    Preset {
        name: "sicredi",
        title: "Sicredi",
        production: Some(Endpoints {
            upstream: "https://api-pix.sicredi.com.br/api/v2",
            token_url: "https://api-pix.sicredi.com.br/oauth/token",
        }),
        sandbox: Some(Endpoints {
            upstream: "https://api-pix-h.sicredi.com.br/api/v2",
            token_url: "https://api-pix-h.sicredi.com.br/oauth/token",
        }),
        client_auth: ClientAuth::Basic,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: Some("cob.read cob.write pix.read"),
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "API host and Basic auth corroborated by public client code",
    },
    Preset {
        name: "custom",
        title: "any other PSP (give --upstream and --token-url)",
        production: None,
        sandbox: None,
        client_auth: ClientAuth::Post,
        encoding: TokenEncoding::Form,
        grant_type: GrantTypeIn::Body,
        default_scope: None,
        developer_key_param: None,
        api_headers: &[],
        http1_only: false,
        source: "-",
    },
];

fn auth_name(a: ClientAuth) -> &'static str {
    match a {
        ClientAuth::Post => "secret in body (`post`)",
        ClientAuth::Basic => "HTTP Basic (`basic`)",
        ClientAuth::None => "client_id only (`none`)",
    }
}

fn encoding_name(e: TokenEncoding) -> &'static str {
    match e {
        TokenEncoding::Form => "form",
        TokenEncoding::Json => "JSON",
    }
}

/// The presets as a Markdown table (what `providers` prints and the README carries).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| preset | token URL (production / sandbox) | API base (production / sandbox) | client auth | body | scope sent | extras |\n|---|---|---|---|---|---|---|\n",
    );
    for p in PRESETS {
        let pair = |f: fn(&Endpoints) -> &'static str| match (p.production, p.sandbox) {
            (Some(prod), Some(sb)) => format!("`{}` / `{}`", f(&prod), f(&sb)),
            (Some(prod), None) => format!("`{}`", f(&prod)),
            _ => "—".into(),
        };
        let extras = p.extras();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            p.name,
            pair(|e| e.token_url),
            pair(|e| e.upstream),
            auth_name(p.client_auth),
            encoding_name(p.encoding),
            p.default_scope
                .map(|s| format!("`{s}`"))
                .unwrap_or_else(|| "no".into()),
            if extras.is_empty() {
                "—".to_owned()
            } else {
                extras
            },
        ));
    }
    out
}

/// Where each row's facts come from, as a Markdown list.
pub fn sources() -> String {
    PRESETS
        .iter()
        .filter(|p| p.name != "custom")
        .map(|p| format!("- `{}` ({}): {}\n", p.name, p.title, p.source))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_but_custom_has_https_production_endpoints() {
        for p in PRESETS.iter().filter(|p| p.name != "custom") {
            let e = p.production.expect(p.name);
            assert!(
                e.upstream.starts_with("https://") && e.token_url.starts_with("https://"),
                "{}",
                p.name
            );
            if let Some(s) = p.sandbox {
                assert!(s.upstream.starts_with("https://") && s.token_url.starts_with("https://"));
            }
        }
        assert!(find("custom").unwrap().production.is_none());
        assert!(find("nubank").is_none());
    }

    #[test]
    fn preset_header_names_are_valid_header_names() {
        for p in PRESETS {
            for h in p.api_headers {
                let (ApiHeader::CorrelationId(n) | ApiHeader::ClientId(n)) = h;
                assert!(
                    http::HeaderName::from_bytes(n.as_bytes()).is_ok(),
                    "{}: {n}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PRESETS.len());
    }
}
