//! The mock PSP's OAuth2 token endpoint: checks the client-credentials request in the
//! configured dialect (client authentication, body encoding, `grant_type` place, scope) and
//! the client certificate, then issues a short-lived JWT-shaped token bound to that
//! certificate; or answers what the test set with [`super::TokenMode`].

// The server's state and response helpers are the parent's; this is one of its handlers.
use super::*;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

pub(super) async fn token_endpoint(
    state: &State,
    cert: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut mode_rx = state.mode_changed.subscribe();
    loop {
        let mode = state.mode.lock().unwrap().clone();
        match mode {
            TokenMode::Normal => break,
            TokenMode::Raw {
                status,
                content_type,
                body,
            } => {
                let mut resp = Response::new(Full::new(body));
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                return resp;
            }
            TokenMode::Hang => {
                if mode_rx.changed().await.is_err() {
                    return oauth_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "",
                    );
                }
            }
        }
    }
    let settings = state.settings.lock().unwrap().clone();
    if req.method() != Method::POST {
        return oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "POST required",
        );
    }
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            let (id, pw) = s.split_once(':')?;
            let dec = |x: &str| {
                form_urlencoded::parse(format!("a={x}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(pw)?))
        });
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match settings.encoding {
        Some(TokenEncoding::Json) if !is_json => {
            return oauth_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "Content-Type must be application/json",
            );
        }
        Some(TokenEncoding::Form) if is_json => {
            return oauth_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "Content-Type must be application/x-www-form-urlencoded",
            );
        }
        _ => {}
    }
    let query_grant = req.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "grant_type" && v == "client_credentials")
    });
    let Ok(body) = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body unreadable",
        );
    };
    let body = body.to_bytes();
    let fields: HashMap<String, String> = if is_json {
        match serde_json::from_slice::<HashMap<String, serde_json::Value>>(&body) {
            Ok(m) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            Err(_) => {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed JSON");
            }
        }
    } else {
        form_urlencoded::parse(&body).into_owned().collect()
    };
    let body_grant = fields.get("grant_type").map(String::as_str) == Some("client_credentials");
    let grant_ok = if settings.grant_type_in_query {
        query_grant && !fields.contains_key("grant_type")
    } else {
        body_grant
    };
    if !grant_ok {
        let where_ = if settings.grant_type_in_query {
            "the query string"
        } else {
            "the body"
        };
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("grant_type=client_credentials must be in {where_}"),
        );
    }
    if settings.require_scope && fields.get("scope").is_none_or(|s| s.trim().is_empty()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope is required",
        );
    }
    let body_id = fields.get("client_id");
    let body_secret = fields.get("client_secret");
    let authenticated = match settings.auth {
        ClientAuth::Post => {
            basic.is_none()
                && body_id == Some(&settings.client_id)
                && body_secret == Some(&settings.client_secret)
        }
        ClientAuth::Basic => {
            body_secret.is_none()
                && basic.as_ref()
                    == Some(&(settings.client_id.clone(), settings.client_secret.clone()))
        }
        ClientAuth::None => {
            basic.is_none() && body_secret.is_none() && body_id == Some(&settings.client_id)
        }
    };
    if !authenticated {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let token = new_token(settings.token_ttl);
    state.tokens.lock().unwrap().insert(
        token.clone(),
        Issued {
            expires_at: Instant::now() + settings.token_ttl,
            client_cert: cert.to_owned(),
        },
    );
    state.issued.lock().unwrap().push(token.clone());
    state.token_certs.lock().unwrap().push(cert.to_owned());
    let mut body = serde_json::json!({
        "access_token": token,
        "expires_in": settings.token_ttl.as_secs(),
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
    });
    if let Some(scope) = settings.grant_scope.as_ref().or(fields.get("scope")) {
        body["scope"] = serde_json::Value::from(scope.as_str());
    }
    json(settings.token_status, body)
}

fn new_token(ttl: Duration) -> String {
    let mut random = [0u8; 24];
    aws_lc_rs::rand::fill(&mut random).expect("system RNG");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + ttl.as_secs();
    let header = b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64.encode(format!(
        r#"{{"exp":{exp},"azp":"sandbox","jti":"{}"}}"#,
        hex(&random[..8])
    ));
    format!("{header}.{claims}.{}", b64.encode(random))
}
