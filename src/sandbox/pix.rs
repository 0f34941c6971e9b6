//! Pix-shaped endpoints of the mock PSP, modelled on the BCB "API Pix" v2: immediate charges
//! (`PUT`/`GET /cob/{txid}`, and `POST /cob/{txid}/pay` to simulate a payment) and received
//! Pix (`GET /pix`, `GET /pix/{endToEndId}`), with the BCB's RFC 7807 errors.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Uri, request::Parts};
use http_body_util::Full;
use serde_json::{Value, json};

use super::psp::json as json_response;

type Handler<'a> = Box<dyn FnOnce(&Parts, &Bytes) -> Response<Full<Bytes>> + Send + 'a>;

/// The handler for a Pix route, if `method` + `uri` is one.
pub(super) fn route<'a>(
    cobs: &'a Mutex<HashMap<String, Value>>,
    pix: &'a Mutex<HashMap<String, Value>>,
    method: &Method,
    uri: &Uri,
) -> Option<Handler<'a>> {
    let path = uri.path();
    if let Some(txid) = path
        .strip_prefix("/cob/")
        .and_then(|p| p.strip_suffix("/pay"))
        .filter(|t| !t.contains('/'))
    {
        let txid = txid.to_owned();
        return (*method == Method::POST)
            .then(|| -> Handler<'a> { Box::new(move |_, _| pay_cob(cobs, pix, &txid)) });
    }
    if let Some(e2e) = path.strip_prefix("/pix/").filter(|t| !t.contains('/')) {
        let e2e = e2e.to_owned();
        return (*method == Method::GET)
            .then(|| -> Handler<'a> { Box::new(move |_, _| get_pix(pix, &e2e)) });
    }
    if let Some(txid) = path.strip_prefix("/cob/").filter(|t| !t.contains('/')) {
        let txid = txid.to_owned();
        return match *method {
            Method::PUT => Some(Box::new(move |_, body| put_cob(cobs, &txid, body))),
            Method::GET => Some(Box::new(move |_, _| get_cob(cobs, &txid))),
            _ => None,
        };
    }
    if path == "/pix" && method == Method::GET {
        let query = uri.query().unwrap_or("").to_owned();
        return Some(Box::new(move |_, _| list_pix(&query)));
    }
    None
}

fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
    violations: Value,
) -> Response<Full<Bytes>> {
    let mut body = json!({
        "type": format!("https://pix.bcb.gov.br/api/v2/error/{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if violations.as_array().is_some_and(|v| !v.is_empty()) {
        body["violacoes"] = violations;
    }
    let mut resp = json_response(status, body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    resp
}

fn valid_txid(txid: &str) -> bool {
    (26..=35).contains(&txid.len()) && txid.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn valid_amount(v: &str) -> bool {
    match v.split_once('.') {
        Some((int, cents)) => {
            !int.is_empty()
                && int.len() <= 10
                && int.bytes().all(|b| b.is_ascii_digit())
                && cents.len() == 2
                && cents.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn now_rfc3339() -> String {
    crate::tls::rfc3339(std::time::SystemTime::now())
}

fn put_cob(
    cobs: &Mutex<HashMap<String, Value>>,
    txid: &str,
    body: &Bytes,
) -> Response<Full<Bytes>> {
    if !valid_txid(txid) {
        return problem(
            StatusCode::BAD_REQUEST,
            "CobOperacaoInvalida",
            "Cobrança inválida.",
            "O campo txid não respeita o schema: 26 a 35 caracteres alfanuméricos.",
            json!([{"razao": "O campo txid não respeita o schema.", "propriedade": "txid"}]),
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "CobOperacaoInvalida",
            "Cobrança inválida.",
            "O corpo da requisição não é um JSON válido.",
            json!([]),
        );
    };
    let mut violations = Vec::new();
    let amount = req["valor"]["original"].as_str().unwrap_or("");
    if !valid_amount(amount) {
        violations.push(json!({"razao": "O campo cob.valor.original não respeita o schema.", "propriedade": "cob.valor.original"}));
    }
    let key = req["chave"].as_str().unwrap_or("");
    if key.is_empty() || key.len() > 77 {
        violations.push(json!({"razao": "O campo cob.chave não respeita o schema.", "propriedade": "cob.chave"}));
    }
    if !violations.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "CobOperacaoInvalida",
            "Cobrança inválida.",
            "A requisição que busca alterar ou criar uma cobrança para pagamento imediato não respeita o schema ou está semanticamente errada.",
            Value::Array(violations),
        );
    }
    let expiry = req["calendario"]["expiracao"].as_u64().unwrap_or(86_400);
    let location = format!(
        "pix.example.com/qr/v2/{}",
        &crate::telemetry::hex(&crate::tls::sha256(txid.as_bytes()))[..32]
    );
    let mut cob = json!({
        "calendario": {"criacao": now_rfc3339(), "expiracao": expiry},
        "txid": txid,
        "revisao": 0,
        "loc": {"id": 1 + cobs.lock().unwrap().len(), "location": location, "tipoCob": "cob"},
        "location": location,
        "status": "ATIVA",
        "valor": {"original": amount, "modalidadeAlteracao": 0},
        "chave": key,
        "pixCopiaECola": format!("00020101021226830014br.gov.bcb.pix2561{location}520400005303986540{}{amount}5802BR5913SANDBOX LTDA6009SAO PAULO62070503***6304ABCD", amount.len()),
    });
    for field in ["devedor", "solicitacaoPagador", "infoAdicionais"] {
        if let Some(v) = req.get(field) {
            cob[field] = v.clone();
        }
    }
    cobs.lock().unwrap().insert(txid.to_owned(), cob.clone());
    json_response(StatusCode::CREATED, cob)
}

fn get_cob(cobs: &Mutex<HashMap<String, Value>>, txid: &str) -> Response<Full<Bytes>> {
    match cobs.lock().unwrap().get(txid) {
        Some(cob) => json_response(StatusCode::OK, cob.clone()),
        None => problem(
            StatusCode::NOT_FOUND,
            "CobNaoEncontrado",
            "Cobrança não encontrada.",
            "Cobrança não encontrada para o txid informado.",
            json!([]),
        ),
    }
}

fn list_pix(query: &str) -> Response<Full<Bytes>> {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (Some(start), Some(end)) = (params.get("inicio"), params.get("fim")) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "RequisicaoInvalida",
            "Requisição inválida.",
            "Os parâmetros inicio e fim são obrigatórios.",
            json!([{"razao": "Parâmetro obrigatório ausente.", "propriedade": "inicio/fim"}]),
        );
    };
    json_response(
        StatusCode::OK,
        json!({
            "parametros": {
                "inicio": start,
                "fim": end,
                "paginacao": {"paginaAtual": 0, "itensPorPagina": 100, "quantidadeDePaginas": 0, "quantidadeTotalDeItens": 0}
            },
            "pix": []
        }),
    )
}

/// Store a received Pix and return it (BCB `Pix` object).
pub(super) fn record(pix: &Mutex<HashMap<String, Value>>, txid: &str, valor: &str) -> Value {
    let mut rand = String::new();
    for _ in 0..26 {
        rand.push(fastrand::alphanumeric());
    }
    // E + ISPB (8 digits) + date-ish + random: 32 characters like the BCB's.
    let e2e = format!("E00000000{}", &rand[..23]);
    let record = json!({
        "endToEndId": e2e,
        "txid": txid,
        "valor": valor,
        "horario": now_rfc3339(),
        "infoPagador": "pagamento de teste",
    });
    pix.lock().unwrap().insert(e2e, record.clone());
    record
}

fn get_pix(pix: &Mutex<HashMap<String, Value>>, e2e: &str) -> Response<Full<Bytes>> {
    match pix.lock().unwrap().get(e2e) {
        Some(p) => json_response(StatusCode::OK, p.clone()),
        None => problem(
            StatusCode::NOT_FOUND,
            "PixNaoEncontrado",
            "Pix não encontrado.",
            "Pix não encontrado para o endToEndId informado.",
            json!([]),
        ),
    }
}

/// Simulate the payer paying the charge: the charge becomes CONCLUIDA and a Pix is recorded.
fn pay_cob(
    cobs: &Mutex<HashMap<String, Value>>,
    pix: &Mutex<HashMap<String, Value>>,
    txid: &str,
) -> Response<Full<Bytes>> {
    let valor = {
        let mut cobs = cobs.lock().unwrap();
        let Some(cob) = cobs.get_mut(txid) else {
            return get_cob_missing();
        };
        cob["status"] = json!("CONCLUIDA");
        cob["valor"]["original"]
            .as_str()
            .unwrap_or("0.00")
            .to_owned()
    };
    let record = record(pix, txid, &valor);
    json_response(StatusCode::OK, json!({"pix": [record]}))
}

fn get_cob_missing() -> Response<Full<Bytes>> {
    problem(
        StatusCode::NOT_FOUND,
        "CobNaoEncontrado",
        "Cobrança não encontrada.",
        "Cobrança não encontrada para o txid informado.",
        json!([]),
    )
}
