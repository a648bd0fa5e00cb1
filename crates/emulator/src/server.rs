//! Network front end: routing (blob service, Key Vault, admin), the
//! operation a request names, authentication, the service version, and the
//! headers every response carries. The operations themselves are `ops`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin::admin;
use crate::auth;
use crate::error::{error_body, ApiError};
use crate::faults::{fault_before, truncated, FaultKind};
use crate::http::{content_length, full, parse_query, percent_decode, Req, RespBody};
use crate::ops;
use crate::receive::receive_body;
use crate::shared::Shared;

/// Operation name from method, path shape and query (used for stats, faults, SAS).
fn operation(
    method: &Method,
    has_container: bool,
    has_blob: bool,
    req_q: &[(String, String)],
    headers: &HeaderMap,
) -> &'static str {
    let q = |n: &str| {
        req_q
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let comp = q("comp").unwrap_or("");
    if !has_container {
        return match (method.as_str(), comp) {
            ("GET", "list") => "ListContainers",
            ("GET", "properties") | ("HEAD", "properties") => "GetServiceProperties",
            _ => "Unknown",
        };
    }
    if !has_blob {
        return match (method.as_str(), comp) {
            ("PUT", "") => "CreateContainer",
            ("GET", "") | ("HEAD", "") => "GetContainerProperties",
            ("DELETE", "") => "DeleteContainer",
            ("GET", "list") => "ListBlobs",
            ("PUT", "metadata") => "SetContainerMetadata",
            ("GET", "metadata") | ("HEAD", "metadata") => "GetContainerMetadata",
            _ => "Unknown",
        };
    }
    match (method.as_str(), comp) {
        ("GET", "") => "GetBlob",
        ("HEAD", "") => "GetBlobProperties",
        // Put Blob From URL names the blob type; Copy Blob does not.
        ("PUT", "")
            if headers.contains_key("x-ms-copy-source")
                && headers.contains_key("x-ms-blob-type") =>
        {
            "PutBlobFromUrl"
        }
        ("PUT", "") if headers.contains_key("x-ms-copy-source") => "CopyBlob",
        ("PUT", "block") if headers.contains_key("x-ms-copy-source") => "PutBlockFromUrl",
        ("PUT", "") => "PutBlob",
        ("PUT", "block") => "PutBlock",
        ("PUT", "blocklist") => "PutBlockList",
        ("GET", "blocklist") => "GetBlockList",
        ("DELETE", "") => "DeleteBlob",
        ("PUT", "metadata") => "SetBlobMetadata",
        ("GET", "metadata") | ("HEAD", "metadata") => "GetBlobMetadata",
        ("PUT", "properties") => "SetBlobProperties",
        ("PUT", "tags") => "SetBlobTags",
        ("GET", "tags") => "GetBlobTags",
        _ => "Unknown",
    }
}

/// Add the headers every response carries.
fn finish(
    mut resp: Response<RespBody>,
    request_id: &str,
    version: &str,
    client_id: Option<&HeaderValue>,
) -> Response<RespBody> {
    let h = resp.headers_mut();
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(request_id).unwrap(),
    );
    if let Ok(v) = HeaderValue::from_str(version) {
        h.insert("x-ms-version", v);
    }
    h.insert(
        "date",
        HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())).unwrap(),
    );
    h.insert(
        "server",
        HeaderValue::from_static("Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"),
    );
    if let Some(c) = client_id {
        h.insert("x-ms-client-request-id", c.clone());
    }
    resp
}

pub fn error_response(err: &ApiError, request_id: &str, head: bool) -> Response<RespBody> {
    let no_body = head || err.status == StatusCode::NOT_MODIFIED;
    let body = if no_body {
        Bytes::new()
    } else {
        Bytes::from(error_body(err, request_id))
    };
    let mut b = Response::builder()
        .status(err.status)
        .header("x-ms-error-code", err.code);
    if !no_body {
        b = b
            .header("content-type", "application/xml")
            .header("content-length", body.len());
    }
    for (k, v) in &err.headers {
        b = b.header(*k, v.as_str());
    }
    let mut resp = b.body(full(body)).unwrap();
    if let Ok(r) = hyper::ext::ReasonPhrase::try_from(err.message.clone()) {
        resp.extensions_mut().insert(r);
    }
    resp
}

fn valid_version(v: &str) -> bool {
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok() && v.len() == 10 && v >= "2019-02-02"
}

/// The top-level request handler. `Err` means: drop the connection without a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, io::Error> {
    let raw_path = req.uri().path().to_string();
    if shared.kv.owns(&raw_path) {
        let base = shared.base_url.lock().unwrap().clone();
        return Ok(crate::keyvault::handle(&shared.kv, &base, req).await);
    }
    if raw_path.starts_with("/__admin/") {
        return Ok(admin(shared, req).await);
    }
    if !shared.latency.is_zero() {
        tokio::time::sleep(shared.latency).await;
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let client_id = parts.headers.get("x-ms-client-request-id").cloned();
    let head = parts.method == Method::HEAD;
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let req_version = parts
        .headers
        .get("x-ms-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let echo_version = req_version
        .clone()
        .filter(|v| valid_version(v))
        .unwrap_or_else(|| "2021-08-06".to_string());
    // Every response, errors included, carries the request's echo headers.
    let reply = |resp| finish(resp, &request_id, &echo_version, client_id.as_ref());

    let (account, container, blob) = split_path(&raw_path);
    let op = operation(
        &parts.method,
        !container.is_empty(),
        !blob.is_empty(),
        &query,
        &parts.headers,
    );
    shared.count(op);

    let fault = shared.decide_fault(op);
    if let Some(e) = fault_before(fault).await? {
        return Ok(reply(error_response(&e, &request_id, head)));
    }

    let result = process(
        &shared,
        parts.method.clone(),
        parts.headers,
        query,
        &raw_path,
        account,
        container,
        blob,
        op,
        req_version,
        body,
    )
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => error_response(&e, &request_id, head),
    };
    if !head {
        if let Some(len) = content_length(&resp) {
            shared.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
        }
    }
    let mut resp = reply(resp);
    if fault == Some(FaultKind::Truncate) {
        resp = truncated(resp, head)?;
    }
    if let (Some(link), false) = (&shared.link, head) {
        let (p, b) = resp.into_parts();
        resp = Response::from_parts(p, link.throttle(b));
    }
    Ok(resp)
}

/// Path style: `/{account}/{container}/{blob...}`, each part percent-decoded
/// (empty when absent).
fn split_path(raw_path: &str) -> (String, String, String) {
    let trimmed = raw_path.trim_start_matches('/');
    let mut it = trimmed.splitn(3, '/');
    let account = percent_decode(it.next().unwrap_or(""));
    let container = percent_decode(it.next().unwrap_or(""));
    let blob = percent_decode(it.next().unwrap_or(""));
    (account, container, blob)
}

#[allow(clippy::too_many_arguments)]
async fn process(
    shared: &Arc<Shared>,
    method: Method,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    raw_path: &str,
    account: String,
    container: String,
    blob: String,
    op: &'static str,
    req_version: Option<String>,
    body: Incoming,
) -> Result<Response<RespBody>, ApiError> {
    let sas_version = auth::authenticate(
        shared, &method, &headers, &query, raw_path, &account, &container, &blob, op,
    )?;
    let version = request_version(shared, req_version, sas_version)?;
    if op == "Unknown" {
        return Err(ApiError::unsupported());
    }
    let received = receive_body(shared, &method, &headers, op, body).await?;
    let req = Req {
        method,
        headers,
        query,
        account,
        container,
        blob,
        body: received.data,
        body_crc64: received.crc64,
        body_md5: received.md5,
        body_encrypted: received.encrypted,
        tls: shared.tls,
        version,
    };
    ops::dispatch(shared, op, req).await
}

/// The service version the request is served at: the header's, else the
/// SAS's; one the service does not know is refused.
fn request_version(
    shared: &Shared,
    req_version: Option<String>,
    sas_version: Option<String>,
) -> Result<String, ApiError> {
    let version = match (req_version, sas_version) {
        (Some(v), _) => v,
        (None, Some(sv)) => sv,
        (None, None) => return Err(ApiError::missing_header("x-ms-version")),
    };
    if !valid_version(&version) {
        return Err(ApiError::invalid_header("x-ms-version", &version));
    }
    if !shared.source_cpk && ops::from_url::version_has_source_cpk(&version) {
        // A service that predates 2026-02-06 (Azurite answers unknown versions the
        // same way): what cpkfs detects to fall back to streaming.
        return Err(ApiError::invalid_header("x-ms-version", &version));
    }
    Ok(version)
}
