//! Network front end: TLS, HTTP/1.1, routing, authentication, admin endpoints,
//! statistics and fault injection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::auth;
use super::error::{error_body, ApiError};
use super::ops;
use super::store::{Disk, State};

pub type RespBody = BoxBody<Bytes, io::Error>;

/// Received request bodies are digested, copied and encrypted in pieces of this size.
const BODY_PIECE: usize = 64 * 1024;

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> RespBody {
    full(Bytes::new())
}

#[derive(Default)]
pub struct Stats {
    pub requests: Mutex<BTreeMap<String, u64>>,
    pub total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub faults: AtomicU64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultConfig {
    pub rate: f64,
    pub kinds: Vec<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ms: Option<u64>,
}

pub struct Faults {
    pub cfg: FaultConfig,
    pub rng: rand::rngs::StdRng,
}

pub struct Shared {
    pub state: Mutex<State>,
    pub disk: Disk,
    pub tls: bool,
    pub allow_cpk_over_http: bool,
    /// Serve service version 2026-02-06 and later (source keys on the From-URL
    /// operations). Off: those versions are refused like an older service does.
    pub source_cpk: bool,
    pub stats: Stats,
    pub faults: Mutex<Option<Faults>>,
    pub base_url: Mutex<String>,
    /// Key Vault and Entra ID endpoints (`keyvault.rs`).
    pub kv: super::keyvault::KvState,
    /// A slow link for response bodies (`--bandwidth`), and added latency
    /// (`--latency`): `link.rs`.
    pub link: Option<Arc<super::link::Link>>,
    pub latency: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FaultKind {
    E500,
    E503,
    E408,
    Reset,
    Slow(u64),
    Truncate,
}

impl Shared {
    fn count(&self, op: &str) {
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .requests
            .lock()
            .unwrap()
            .entry(op.to_string())
            .or_default() += 1;
    }

    fn decide_fault(&self, op: &str) -> Option<FaultKind> {
        let mut g = self.faults.lock().unwrap();
        let f = g.as_mut()?;
        if let Some(ops) = &f.cfg.operations {
            if !ops.iter().any(|o| o == op) {
                return None;
            }
        }
        if f.cfg.kinds.is_empty() || f.rng.gen::<f64>() >= f.cfg.rate {
            return None;
        }
        let k = f.rng.gen_range(0..f.cfg.kinds.len());
        let kind = match f.cfg.kinds[k].as_str() {
            "500" => FaultKind::E500,
            "503" => FaultKind::E503,
            "408" => FaultKind::E408,
            "reset" => FaultKind::Reset,
            "slow" => FaultKind::Slow(f.cfg.slow_ms.unwrap_or(300)),
            "truncate" => FaultKind::Truncate,
            _ => return None,
        };
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        Some(kind)
    }
}

/// Request facts handed to the operation handlers.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    pub account: String,
    pub container: String,
    pub blob: String,
    /// The request body: plaintext, unless `body_encrypted` is set.
    pub body: BytesMut,
    /// CRC-64 (NVMe) of the plaintext body, computed while it was received.
    pub body_crc64: u64,
    /// MD5 of the plaintext body (computed for Put Blob and when Content-MD5 is sent).
    pub body_md5: Option<[u8; 16]>,
    /// Put Block / Put Blob with a valid customer-provided key: the body was
    /// AES-256-CTR-encrypted as it arrived, with this nonce under the key whose
    /// SHA-256 (base64) is given.
    pub body_encrypted: Option<([u8; 16], String)>,
    pub tls: bool,
    pub version: String,
}

impl Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn h(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

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
        _ => "Unknown",
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
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
        return Ok(super::keyvault::handle(&shared.kv, &base, req).await);
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
    let query = auth::parse_query(parts.uri.query().unwrap_or(""));
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

/// The part of an injected fault that comes before the request is
/// processed: a reset drops the connection (`Err`), an error status is
/// answered instead of the request (`Some`), a slow fault waits.
async fn fault_before(fault: Option<FaultKind>) -> Result<Option<ApiError>, io::Error> {
    match fault {
        Some(FaultKind::Reset) => Err(io::Error::other("injected reset")),
        Some(FaultKind::E500) => Ok(Some(ApiError::internal())),
        Some(FaultKind::E503) => Ok(Some(
            ApiError::new(
                503,
                "ServerBusy",
                "The server is currently unable to receive requests. Please retry your request.",
            )
            .header("retry-after", "1"),
        )),
        Some(FaultKind::E408) => Ok(Some(ApiError::new(
            408,
            "RequestTimeout",
            "The server timed out waiting for the request.",
        ))),
        Some(FaultKind::Slow(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn content_length(resp: &Response<RespBody>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The truncate fault: the response keeps its Content-Length but delivers
/// half the body, then the connection drops. A response without a body has
/// nothing to cut: the connection drops at once.
fn truncated(resp: Response<RespBody>, head: bool) -> Result<Response<RespBody>, io::Error> {
    let len = if head { None } else { content_length(&resp) };
    match len {
        Some(n) if n > 0 => {
            let (p, b) = resp.into_parts();
            Ok(Response::from_parts(p, Truncate::new(b, n / 2, n).boxed()))
        }
        _ => Err(io::Error::other("injected reset (truncate without body)")),
    }
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
    if !shared.source_cpk && super::from_url::version_has_source_cpk(&version) {
        // A service that predates 2026-02-06 (Azurite answers unknown versions the
        // same way): what cpkfs detects to fall back to streaming.
        return Err(ApiError::invalid_header("x-ms-version", &version));
    }
    Ok(version)
}

/// A request body as the handlers get it (see [`Req`]).
struct Received {
    data: BytesMut,
    crc64: u64,
    md5: Option<[u8; 16]>,
    encrypted: Option<([u8; 16], String)>,
}

/// Read the body of a PUT or POST (any other request's is ignored), digesting
/// it, and encrypting it on the way in when it is a block under a
/// customer-provided key.
async fn receive_body(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    op: &str,
    body: Incoming,
) -> Result<Received, ApiError> {
    let mut buf = BytesMut::new();
    let mut crc = crc64fast_nvme::Digest::new();
    let mut md5: Option<md5::Md5> = None;
    let mut enc: Option<(super::cpk::KeyStream, [u8; 16], String)> = None;
    if method == Method::PUT || method == Method::POST {
        let len = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let Some(len) = len else {
            return Err(ApiError::new(
                411,
                "MissingContentLengthHeader",
                "Content-Length HTTP header is missing.",
            ));
        };
        if op == "PutBlob" || headers.contains_key("content-md5") {
            md5 = Some(<md5::Md5 as md5::Digest>::new());
        }
        enc = body_cipher(shared, headers, op);
        let data = copy_body(body, len, &mut crc, &mut md5, &mut enc).await?;
        buf = BytesMut::from(bytes::Bytes::from(data));
        shared
            .stats
            .bytes_in
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if buf.len() != len {
            return Err(ApiError::invalid_input());
        }
    }
    Ok(Received {
        data: buf,
        crc64: crc.sum64(),
        md5: md5.map(|m| md5::Digest::finalize(m).into()),
        encrypted: enc.map(|(_, nonce, sha)| (nonce, sha)),
    })
}

/// Blocks are stored encrypted: encrypt while the data is still in cache
/// instead of in a second pass over the whole block. Only when the request
/// will pass the CPK checks; the operation re-validates the headers anyway.
fn body_cipher(
    shared: &Shared,
    headers: &HeaderMap,
    op: &str,
) -> Option<(super::cpk::KeyStream, [u8; 16], String)> {
    if (op == "PutBlock" || op == "PutBlob") && (shared.tls || shared.allow_cpk_over_http) {
        if let Ok(Some(k)) = super::cpk::parse(headers, true) {
            let nonce = ops::new_nonce();
            return Some((k.keystream(&nonce, 0), nonce, k.sha.clone()));
        }
    }
    None
}

/// One pass over the data in the block buffer, sized up front: the copy out of
/// hyper's read buffer, fused with the digests and, when there is a key, the
/// encryption. Returns what arrived (at most `len` bytes).
async fn copy_body(
    mut body: Incoming,
    len: usize,
    crc: &mut crc64fast_nvme::Digest,
    md5: &mut Option<md5::Md5>,
    enc: &mut Option<(super::cpk::KeyStream, [u8; 16], String)>,
) -> Result<Vec<u8>, ApiError> {
    let mut data = alloc_body(len);
    let mut pos = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(
                400,
                "InvalidInput",
                "One of the request inputs is not valid.",
            )
        })?;
        let Ok(d) = frame.into_data() else { continue };
        if d.len() > len - pos {
            return Err(ApiError::invalid_input());
        }
        // Digest and copy/encrypt piece by piece while each piece is hot in cache.
        for piece in d.chunks(BODY_PIECE) {
            crc.write(piece);
            if let Some(m) = md5.as_mut() {
                md5::Digest::update(m, piece);
            }
            let dst = &mut data[pos..pos + piece.len()];
            match enc.as_mut() {
                Some((ks, _, _)) => ks.apply_to(piece, dst),
                None => dst.copy_from_slice(piece),
            }
            pos += piece.len();
        }
    }
    data.truncate(pos);
    Ok(data)
}

/// A zero-filled buffer for a request body of `len` bytes. Zeroed memory comes from
/// `calloc`, which for large sizes maps fresh pages without writing them, so the body
/// copy is the first (and only) pass over it. Large buffers are populated up front
/// with one `madvise(MADV_POPULATE_WRITE)` instead of taking a page fault per 4 KiB
/// while the body is copied in (on this VM that costs as much as the copy). Transparent
/// huge pages were tried too: their first-touch clearing cost far more.
fn alloc_body(len: usize) -> Vec<u8> {
    let v = vec![0u8; len];
    const PAGE: usize = 4096;
    // Not for huge declared lengths: the memory would be committed before any of the
    // body arrived.
    if (1 << 20..=64 << 20).contains(&len) {
        let addr = v.as_ptr() as usize;
        let start = addr.next_multiple_of(PAGE);
        let end = (addr + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: advisory only (faults in pages of the live allocation `v`; their
            // contents stay zero). Failure (old kernels: EINVAL) is harmless.
            unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    end - start,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    }
    v
}

/// How long a truncated response waits, after its last partial frame, before it fails
/// (which makes hyper drop the connection). hyper flushes what it has buffered while
/// the body is pending; failing at once would drop the status line, the headers and
/// the partial data with the connection.
const TRUNCATE_LINGER: Duration = Duration::from_millis(100);

/// A body that delivers `remaining` bytes, then (after [`TRUNCATE_LINGER`]) fails,
/// which closes the connection: the client sees the full Content-Length, a partial
/// body and a connection that ends early.
struct Truncate {
    inner: RespBody,
    remaining: u64,
    total: u64,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Truncate {
    fn new(inner: RespBody, remaining: u64, total: u64) -> Truncate {
        Truncate {
            inner,
            remaining,
            total,
            linger: None,
        }
    }

    /// Pending until the linger timer fires, then the injected error.
    fn poll_fail(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let t = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(TRUNCATE_LINGER)));
        match t.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::other("injected truncation")))),
        }
    }
}

impl Body for Truncate {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return this.poll_fail(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut d) => {
                    if d.len() as u64 > this.remaining {
                        d.truncate(this.remaining as usize);
                    }
                    this.remaining -= d.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Err(f) => Poll::Ready(Some(Ok(f))),
            },
            Poll::Ready(None) => {
                this.remaining = 0;
                this.poll_fail(cx)
            }
            other => other,
        }
    }
    fn is_end_stream(&self) -> bool {
        false
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total)
    }
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(full(body))
        .unwrap()
}

async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let query = auth::parse_query(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let bad = |msg: &str| json_response(400, &serde_json::json!({"error": msg}));
    match (method.as_str(), path.as_str()) {
        ("GET", "/__admin/stats") => {
            let reqs = shared.stats.requests.lock().unwrap().clone();
            json_response(
                200,
                &serde_json::json!({
                    "requests": reqs,
                    "total_requests": shared.stats.total.load(Ordering::Relaxed),
                    "bytes_in": shared.stats.bytes_in.load(Ordering::Relaxed),
                    "bytes_out": shared.stats.bytes_out.load(Ordering::Relaxed),
                    "faults_injected": shared.stats.faults.load(Ordering::Relaxed),
                }),
            )
        }
        ("DELETE", "/__admin/stats") => {
            shared.stats.requests.lock().unwrap().clear();
            shared.stats.total.store(0, Ordering::Relaxed);
            shared.stats.bytes_in.store(0, Ordering::Relaxed);
            shared.stats.bytes_out.store(0, Ordering::Relaxed);
            shared.stats.faults.store(0, Ordering::Relaxed);
            Response::builder().status(204).body(empty()).unwrap()
        }
        ("POST", "/__admin/faults") => {
            let cfg: FaultConfig = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => return bad(&e.to_string()),
            };
            if !(0.0..=1.0).contains(&cfg.rate) {
                return bad("rate must be within 0..=1");
            }
            for k in &cfg.kinds {
                if !["500", "503", "408", "reset", "slow", "truncate"].contains(&k.as_str()) {
                    return bad(&format!("unknown fault kind {k}"));
                }
            }
            let echo = serde_json::to_value(&cfg).unwrap();
            *shared.faults.lock().unwrap() = Some(Faults {
                rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
                cfg,
            });
            json_response(200, &echo)
        }
        ("DELETE", "/__admin/faults") => {
            *shared.faults.lock().unwrap() = None;
            Response::builder().status(204).body(empty()).unwrap()
        }
        ("POST", p) if p.starts_with("/__admin/accounts/") && p.ends_with("/regenerate-key") => {
            let name = percent_decode(
                p.trim_start_matches("/__admin/accounts/")
                    .trim_end_matches("/regenerate-key"),
            );
            let which: usize = match query
                .iter()
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.as_str())
            {
                Some("1") | None => 1,
                Some("2") => 2,
                Some(_) => return bad("key must be 1 or 2"),
            };
            let mut raw = [0u8; 64];
            rand::thread_rng().fill(&mut raw[..]);
            let mut st = shared.state.lock().unwrap();
            let Some(acct) = st.accounts.get_mut(&name) else {
                return json_response(404, &serde_json::json!({"error": "no such account"}));
            };
            acct.keys[which - 1] = raw.to_vec();
            json_response(
                200,
                &serde_json::json!({"account": name, "key": B64.encode(raw), "which": which}),
            )
        }
        _ => json_response(404, &serde_json::json!({"error": "unknown admin endpoint"})),
    }
}
