//! The mock PSP's API: accepts only a token it issued, to the certificate that asked for it
//! (or answers 401 when told to), then hands the Pix endpoints to [`crate::sandbox::pix`] and
//! echoes anything else as JSON (method, path, query, headers, body).

// The server's state and response helpers are the parent's; this is one of its handlers.
use super::*;

pub(super) async fn api(
    state: &State,
    cert: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let delay = *state.api_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let forced_reject = state
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let valid = !forced_reject
        && bearer.as_ref().is_some_and(|b| {
            state
                .tokens
                .lock()
                .unwrap()
                .get(b)
                .is_some_and(|i| i.expires_at > Instant::now() && i.client_cert == cert)
        });
    if !valid {
        let mut resp = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({
                "type": "https://pix.bcb.gov.br/api/v2/error/AcessoNegado",
                "title": "Não Autorizado",
                "status": 401,
                "detail": "token ausente, inválido ou expirado",
            }),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return resp;
    }
    if state.settings.lock().unwrap().pix_api {
        if let Some(resp) =
            crate::sandbox::pix::route(&state.cobs, &state.pix, req.method(), req.uri())
        {
            let pay = req.method() == Method::POST && req.uri().path().ends_with("/pay");
            let (parts, body) = req.into_parts();
            let body = http_body_util::Limited::new(body, 64 * 1024)
                .collect()
                .await;
            let answer = match body {
                Ok(b) => resp(&parts, &b.to_bytes()),
                Err(_) => json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({"error": "body"}),
                ),
            };
            let target = state.webhook.lock().unwrap().clone();
            return match target {
                Some(target) if pay && answer.status() == StatusCode::OK => {
                    crate::sandbox::notify::notify_payment(&target, answer).await
                }
                _ => answer,
            };
        }
    }
    let (parts, mut body) = req.into_parts();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                    digest.update(d);
                }
            }
            Err(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "body"}),
                );
            }
        }
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), serde_json::Value::Array(values));
    }
    json(
        StatusCode::OK,
        serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "authority": parts.uri.authority().map(|a| a.as_str()),
            "headers": headers,
            "body_len": len,
            "body_sha256": hex(digest.finish().as_ref()),
            "client_cert_sha256": cert,
        }),
    )
}
