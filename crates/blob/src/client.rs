//! The Blob REST client: one method per operation, a shared send loop that
//! signs every attempt afresh, retries what is transient and turns answers
//! into typed errors.

use super::cpk::CustomerKey;
use super::credentials::{AccountKey, Credential};
use super::endpoint::Endpoint;
use super::error::{BlobError, ServiceError, TransportKind};
use super::models::*;
use super::retry::{retry_after, status_is_retryable, RetryPolicy};
use super::signing::string_to_sign;
use super::stats::RequestStats;
use super::xml;
use super::{API_VERSION, SOURCE_CPK_VERSION};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// Source of the request time, injectable so signatures are testable.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;
impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub struct ClientConfig {
    pub endpoint: String,
    pub account: String,
    pub container: String,
    pub credential: Credential,
    /// A customer-provided key the client holds but never sends: every
    /// operation takes its key per call (`key: Option<&CustomerKey>`), and
    /// the mount passes the keys of its `KeyRing` (cpkfs-fs), which owns
    /// them. Production (`connect.rs`: mount, rotate-cpk, doctor) leaves
    /// this None. It stays for what tests and examples still ask of it:
    /// - `BlobClient::new` refuses it over plain http (`CpkOverHttp`) before
    ///   any request, which `tests/emulator_client.rs` checks (a key passed
    ///   per call is refused the same way, before sending);
    /// - [`BlobClient::cpk`] hands it back to tests and examples that build a
    ///   keyed client and later need the key (`crates/fs/tests/posix.rs`,
    ///   `examples/bench_tree.rs`);
    /// - `Fs::new` refuses a client carrying one next to an empty ring, so a
    ///   test cannot mount a plain mount by mistake.
    ///
    /// It is not a default key: a call with `key: None` sends none.
    pub cpk: Option<Arc<CustomerKey>>,
    /// Extra trusted CA certificates (PEM), e.g. the emulator's.
    pub ca_pem: Option<Vec<u8>>,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Longest pause between two chunks of a response body.
    pub read_timeout: Duration,
    pub clock: Arc<dyn Clock>,
}

impl ClientConfig {
    pub fn new(endpoint: &str, account: &str, container: &str, credential: Credential) -> Self {
        ClientConfig {
            endpoint: endpoint.to_string(),
            account: account.to_string(),
            container: container.to_string(),
            credential,
            cpk: None,
            ca_pem: None,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            clock: Arc::new(SystemClock),
        }
    }
}

struct Inner {
    http: reqwest::Client,
    endpoint: Endpoint,
    container: String,
    credential: Credential,
    cpk: Option<Arc<CustomerKey>>,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    /// What this client (and every clone) sent and met.
    stats: Arc<RequestStats>,
}

/// A client bound to one container. Cheap to clone.
#[derive(Clone)]
pub struct BlobClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobClient")
            .field("endpoint", &self.inner.endpoint.base())
            .field("container", &self.inner.container)
            .field("cpk", &self.inner.cpk)
            .finish()
    }
}

/// One request to send: built once, signed on every attempt.
#[derive(Clone)]
struct Call<'a> {
    op: &'static str,
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Bytes,
    key: Option<&'a CustomerKey>,
    resource: String,
    /// Safe to resend after a timeout or a connection lost mid-request.
    idempotent: bool,
    /// `x-ms-version` of this request: the pinned version, except for requests
    /// that need a newer feature (source keys: [`SOURCE_CPK_VERSION`]).
    version: &'static str,
    /// The key of a From-URL source (`x-ms-source-encryption-*`).
    source_key: Option<&'a CustomerKey>,
}

impl<'a> Call<'a> {
    fn new(op: &'static str, method: Method, url: Url, resource: String) -> Self {
        Call {
            op,
            method,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            key: None,
            resource,
            idempotent: true,
            version: API_VERSION,
            source_key: None,
        }
    }
    fn header(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }
    fn key(mut self, key: Option<&'a CustomerKey>) -> Self {
        self.key = key;
        self
    }
    fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
    fn non_idempotent(mut self) -> Self {
        self.idempotent = false;
        self
    }
    fn conditions(mut self, c: &Conditions) -> Self {
        if let Some(m) = &c.if_match {
            self = self.header("if-match", quote_etag(m));
        }
        if let Some(m) = &c.if_none_match {
            self = self.header(
                "if-none-match",
                if m == "*" { m.clone() } else { quote_etag(m) },
            );
        }
        self
    }
    /// `x-ms-tags` of a commit, checked as the service would.
    fn tags(self, tags: Option<&Metadata>) -> Result<Self, BlobError> {
        match tags {
            None => Ok(self),
            Some(t) => {
                crate::tags::check(t).map_err(BlobError::Config)?;
                Ok(self.header("x-ms-tags", crate::tags::header_value(t)))
            }
        }
    }
    fn metadata(mut self, md: &Metadata) -> Result<Self, BlobError> {
        for (k, v) in md {
            let name = HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes())
                .map_err(|_| BlobError::Config(format!("invalid metadata name {k:?}")))?;
            let val = HeaderValue::from_str(v).map_err(|_| {
                BlobError::Config(format!(
                    "metadata value of {k:?} is not a valid header value"
                ))
            })?;
            self.headers.insert(name, val);
        }
        Ok(self)
    }
}

/// How long a copy-source SAS made from the account key is valid.
pub const SOURCE_SAS_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// `2024-03-01T00:00:00Z` (SAS times, and times `cpkfs stats` shows), from
/// days since the epoch by the civil calendar algorithm (H. Hinnant), to
/// avoid a date library for one format.
pub fn iso8601(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn transport_kind(err: &reqwest::Error) -> TransportKind {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return TransportKind::Tls;
        }
        // io::Errors nest (hyper-util wraps rustls's error in two of them)
        // and do not expose the inner error through source().
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            src = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        src = e.source();
    }
    if err.is_timeout() {
        TransportKind::Timeout
    } else if err.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Io
    }
}

/// Blob properties from GET/HEAD response headers.
fn properties_from_headers(h: &HeaderMap, status: StatusCode) -> BlobProperties {
    let mut p = BlobProperties {
        content_length: header_str(h, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        etag: header_str(h, "etag").map(quote_etag).unwrap_or_default(),
        last_modified: header_str(h, "last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        creation_time: header_str(h, "x-ms-creation-time")
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        content_type: header_str(h, "content-type").map(str::to_string),
        content_md5: header_str(h, "x-ms-blob-content-md5")
            .or_else(|| header_str(h, "content-md5"))
            .map(str::to_string),
        cpk_sha256: header_str(h, "x-ms-encryption-key-sha256").map(str::to_string),
        server_encrypted: header_str(h, "x-ms-server-encrypted") == Some("true"),
        metadata: Metadata::new(),
        metadata_encrypted: false,
        copy_status: header_str(h, "x-ms-copy-status").map(str::to_string),
        // HEAD tells only how many (x-ms-tag-count); Get Blob Tags has them.
        tags: None,
        tag_count: header_str(h, "x-ms-tag-count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    if status == StatusCode::PARTIAL_CONTENT {
        // Content-Range: bytes 0-4/11 → the blob's size is 11.
        if let Some(total) = header_str(h, "content-range")
            .and_then(|v| v.rsplit('/').next())
            .and_then(|t| t.parse().ok())
        {
            p.content_length = total;
        }
    }
    for (k, v) in h {
        if let Some(name) = k.as_str().strip_prefix("x-ms-meta-") {
            p.metadata
                .insert(name.to_string(), v.to_str().unwrap_or("").to_string());
        }
    }
    p
}

fn write_result(h: &HeaderMap) -> WriteResult {
    WriteResult {
        etag: header_str(h, "etag").map(quote_etag).unwrap_or_default(),
        last_modified: header_str(h, "last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok()),
        cpk_sha256: header_str(h, "x-ms-encryption-key-sha256").map(str::to_string),
    }
}

/// The service answered only after more than one attempt: an earlier
/// attempt may have succeeded with its answer lost.
fn was_retried(e: &BlobError) -> bool {
    e.service().is_some_and(|s| s.attempts > 1)
}

/// How one attempt of a request ended, short of a final failure.
enum Attempt {
    Done(reqwest::Response),
    /// The account key was refused and another one is now in use: resend.
    KeySwitched,
    /// A failure worth retrying, with the service's Retry-After if any.
    Transient(BlobError, Option<Duration>),
}

impl BlobClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, BlobError> {
        let endpoint = Endpoint::new(&cfg.endpoint, &cfg.account).map_err(BlobError::Config)?;
        if cfg.cpk.is_some() && !endpoint.is_https() {
            return Err(BlobError::CpkOverHttp);
        }
        if cfg.container.is_empty() {
            return Err(BlobError::Config("the container name is empty".into()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .no_proxy()
            .http1_only();
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| BlobError::Config(format!("the CA file is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(BlobError::Config("the CA file holds no certificate".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| BlobError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(BlobClient {
            inner: Arc::new(Inner {
                http,
                endpoint,
                container: cfg.container,
                credential: cfg.credential,
                cpk: cfg.cpk,
                retry: cfg.retry,
                clock: cfg.clock,
                stats: Arc::new(RequestStats::default()),
            }),
        })
    }

    pub fn container(&self) -> &str {
        &self.inner.container
    }
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }
    pub fn credential(&self) -> &Credential {
        &self.inner.credential
    }

    /// The key `ClientConfig.cpk` gave this client, if any (never sent by
    /// the client itself: see `ClientConfig.cpk`).
    pub fn cpk(&self) -> Option<&Arc<CustomerKey>> {
        self.inner.cpk.as_ref()
    }
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The request counters of this client and its clones.
    pub fn stats(&self) -> &Arc<RequestStats> {
        &self.inner.stats
    }

    /// Remember a request that ends in `err` (a final failure, not a retry).
    fn record_failure(&self, err: &BlobError) {
        let f = match err {
            BlobError::Service(s) => RequestStats::failure_now(
                s.operation,
                &s.resource,
                Some(s.status),
                s.code.as_deref(),
                s.request_id.as_deref(),
                s.attempts,
            ),
            BlobError::Transport {
                operation,
                resource,
                attempts,
                ..
            } => RequestStats::failure_now(operation, resource, None, None, None, *attempts),
            _ => return,
        };
        self.inner.stats.failed(f);
    }

    fn blob_url(&self, name: &str, query: &[(&str, &str)]) -> Url {
        self.inner
            .endpoint
            .blob_url(&self.inner.container, name, query)
    }
    fn container_url(&self, query: &[(&str, &str)]) -> Url {
        self.inner
            .endpoint
            .container_url(&self.inner.container, query)
    }
    fn res(&self, name: &str) -> String {
        format!("{}/{}", self.inner.container, name)
    }

    /// Headers and authorization for one attempt.
    fn prepare(
        &self,
        call: &Call<'_>,
        key: Option<&AccountKey>,
    ) -> Result<(Url, HeaderMap), BlobError> {
        let mut headers = call.headers.clone();
        let date = httpdate::fmt_http_date(self.inner.clock.now());
        headers.insert("x-ms-date", HeaderValue::from_str(&date).expect("ascii"));
        headers.insert("x-ms-version", HeaderValue::from_static(call.version));
        headers.insert(
            "x-ms-client-request-id",
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("ascii"),
        );
        if let Some(k) = call.key {
            if !self.inner.endpoint.is_https() {
                return Err(BlobError::CpkOverHttp);
            }
            for (n, v) in k.headers() {
                headers.insert(n, v);
            }
        }
        if let Some(k) = call.source_key {
            if !self.inner.endpoint.is_https() {
                return Err(BlobError::CpkOverHttp);
            }
            for (n, v) in k.source_headers() {
                headers.insert(n, v);
            }
        }
        if call.method == Method::PUT || call.method == Method::POST || !call.body.is_empty() {
            headers.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(call.body.len()),
            );
        }
        let mut url = call.url.clone();
        match (&self.inner.credential, key) {
            (Credential::SharedKey(cred), Some(k)) => {
                let sts = string_to_sign(&call.method, &url, &headers, cred.account());
                let mut auth = HeaderValue::from_str(&format!(
                    "SharedKey {}:{}",
                    cred.account(),
                    k.sign(&sts)
                ))
                .expect("ascii");
                auth.set_sensitive(true);
                headers.insert(http::header::AUTHORIZATION, auth);
            }
            (Credential::Sas(token), _) => {
                let q = match url.query() {
                    Some(q) if !q.is_empty() => format!("{q}&{}", token.expose()),
                    _ => token.expose().to_string(),
                };
                url.set_query(Some(&q));
            }
            (Credential::SharedKey(_), None) => unreachable!("shared key without key"),
        }
        Ok((url, headers))
    }

    async fn service_error(
        &self,
        call: &Call<'_>,
        resp: reqwest::Response,
    ) -> (ServiceError, Option<Duration>) {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = if call.method == Method::HEAD {
            Bytes::new()
        } else {
            // Error bodies are small; cap what we read.
            resp.bytes().await.unwrap_or_default()
        };
        RequestStats::add(&self.inner.stats.op(call.op).bytes_in, body.len() as u64);
        let parsed = xml::parse_error(&body);
        let code = header_str(&headers, "x-ms-error-code")
            .map(str::to_string)
            .or_else(|| parsed.as_ref().and_then(|p| p.0.clone()));
        let message = parsed
            .map(|p| p.1)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let mac_mismatch = status == StatusCode::FORBIDDEN
            && match code.as_deref() {
                Some("AuthorizationFailure") => true,
                Some("AuthenticationFailed") => {
                    body.is_empty() || xml::auth_detail_is_mac_mismatch(&body)
                }
                _ => false,
            };
        (
            ServiceError {
                operation: call.op,
                resource: call.resource.clone(),
                status: status.as_u16(),
                code,
                message,
                request_id: header_str(&headers, "x-ms-request-id").map(str::to_string),
                mac_mismatch,
                attempts: 1,
            },
            retry_after(&headers),
        )
    }

    /// Send with retries; returns the successful response (2xx, or 304).
    async fn execute(&self, call: Call<'_>) -> Result<reqwest::Response, BlobError> {
        let policy = &self.inner.retry;
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut tried_keys: Vec<AccountKey> = Vec::new();
        loop {
            attempt += 1;
            let (last_err, retry_wait) = match self
                .attempt(&call, attempt, started, &mut tried_keys)
                .await?
            {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::KeySwitched => {
                    attempt -= 1; // a key switch is not a transient-failure retry
                    continue;
                }
                Attempt::Transient(err, wait) => (err, wait),
            };
            let delay = policy.delay(attempt, retry_wait);
            if attempt >= policy.max_attempts || started.elapsed() + delay > policy.deadline {
                tracing::warn!(op = call.op, resource = %call.resource, attempts = attempt, error = %last_err, "giving up");
                let final_err = last_err.with_attempts(attempt, started.elapsed());
                self.record_failure(&final_err);
                return Err(final_err);
            }
            RequestStats::add(&self.inner.stats.op(call.op).retries, 1);
            tracing::info!(op = call.op, resource = %call.resource, attempt, delay_ms = delay.as_millis() as u64, error = %last_err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt of `call`: sent with the current account key, its answer
    /// classified. A final failure is returned as `Err` (and recorded).
    async fn attempt(
        &self,
        call: &Call<'_>,
        attempt: u32,
        started: Instant,
        tried_keys: &mut Vec<AccountKey>,
    ) -> Result<Attempt, BlobError> {
        let policy = &self.inner.retry;
        let counters = self.inner.stats.op(call.op);
        let account_key = match &self.inner.credential {
            Credential::SharedKey(c) => Some(c.current().1),
            Credential::Sas(_) => None,
        };
        let (url, headers) = self.prepare(call, account_key.as_ref())?;
        let req = self
            .inner
            .http
            .request(call.method.clone(), url)
            .headers(headers)
            .body(call.body.clone());
        RequestStats::add(&counters.requests, 1);
        RequestStats::add(&counters.bytes_out, call.body.len() as u64);
        let t0 = Instant::now();
        let transport =
            |kind, source: Box<dyn std::error::Error + Send + Sync>| BlobError::Transport {
                operation: call.op,
                resource: call.resource.clone(),
                kind,
                attempts: attempt,
                elapsed: started.elapsed(),
                source,
            };
        let fail = |err: BlobError| {
            self.record_failure(&err);
            Err(err)
        };
        match tokio::time::timeout(policy.attempt_timeout, req.send()).await {
            Ok(Ok(resp)) => {
                let status = resp.status();
                tracing::debug!(
                    op = call.op,
                    resource = %call.resource,
                    status = status.as_u16(),
                    request_id = %header_str(resp.headers(), "x-ms-request-id").unwrap_or("-"),
                    attempt,
                    elapsed_ms = t0.elapsed().as_millis() as u64,
                    "blob request"
                );
                if status.is_success() || status == StatusCode::NOT_MODIFIED {
                    return Ok(Attempt::Done(resp));
                }
                let (mut err, retry_after) = self.service_error(call, resp).await;
                err.attempts = attempt;
                if err.mac_mismatch {
                    if let (Credential::SharedKey(cred), Some(k)) =
                        (&self.inner.credential, &account_key)
                    {
                        if cred.rotate_after_failure(k, tried_keys).is_some() {
                            RequestStats::add(&self.inner.stats.key_switches, 1);
                            return Ok(Attempt::KeySwitched);
                        }
                    }
                }
                if !status_is_retryable(err.status) {
                    tracing::debug!(error = %err, "blob request failed");
                    return fail(BlobError::Service(Box::new(err)));
                }
                RequestStats::add(&counters.faults, 1);
                Ok(Attempt::Transient(
                    BlobError::Service(Box::new(err)),
                    retry_after,
                ))
            }
            Ok(Err(e)) => {
                let kind = transport_kind(&e);
                let retryable = match kind {
                    TransportKind::Tls => false,
                    TransportKind::Connect => true,
                    TransportKind::Timeout | TransportKind::Io => call.idempotent,
                };
                if kind != TransportKind::Tls {
                    RequestStats::add(&counters.faults, 1);
                }
                let err = transport(kind, Box::new(e));
                if !retryable {
                    return fail(err);
                }
                Ok(Attempt::Transient(err, None))
            }
            Err(_) => {
                RequestStats::add(&counters.faults, 1);
                let err = transport(
                    TransportKind::Timeout,
                    format!("no response within {:?}", policy.attempt_timeout).into(),
                );
                if !call.idempotent {
                    return fail(err);
                }
                Ok(Attempt::Transient(err, None))
            }
        }
    }

    // ---------------------------------------------------------------- container

    pub async fn create_container(&self) -> Result<(), BlobError> {
        let call = Call::new(
            "CreateContainer",
            Method::PUT,
            self.container_url(&[("restype", "container")]),
            self.inner.container.clone(),
        )
        .non_idempotent();
        self.execute(call).await.map(|_| ())
    }

    pub async fn get_container_properties(&self) -> Result<ContainerProperties, BlobError> {
        let call = Call::new(
            "GetContainerProperties",
            Method::HEAD,
            self.container_url(&[("restype", "container")]),
            self.inner.container.clone(),
        );
        let resp = self.execute(call).await?;
        let h = resp.headers();
        let mut metadata = Metadata::new();
        for (k, v) in h {
            if let Some(n) = k.as_str().strip_prefix("x-ms-meta-") {
                metadata.insert(n.to_string(), v.to_str().unwrap_or("").to_string());
            }
        }
        Ok(ContainerProperties {
            etag: header_str(h, "etag").map(quote_etag),
            last_modified: header_str(h, "last-modified")
                .and_then(|v| httpdate::parse_http_date(v).ok()),
            metadata,
        })
    }

    pub async fn list_blobs(&self, opts: &ListOptions) -> Result<ListPage, BlobError> {
        let max = opts.max_results.map(|m| m.to_string());
        let mut q: Vec<(&str, &str)> = vec![("restype", "container"), ("comp", "list")];
        if let Some(p) = &opts.prefix {
            q.push(("prefix", p));
        }
        if let Some(d) = &opts.delimiter {
            q.push(("delimiter", d));
        }
        if let Some(m) = &opts.marker {
            q.push(("marker", m));
        }
        if let Some(m) = &max {
            q.push(("maxresults", m));
        }
        let include: Vec<&str> = [
            (opts.include_metadata, "metadata"),
            (opts.include_tags, "tags"),
            (opts.include_uncommitted, "uncommittedblobs"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let include = include.join(",");
        if !include.is_empty() {
            q.push(("include", &include));
        }
        let call = Call::new(
            "ListBlobs",
            Method::GET,
            self.container_url(&q),
            self.inner.container.clone(),
        );
        let resource = call.resource.clone();
        let (_, body) = self.execute_with_body(call).await?;
        xml::parse_list_blobs(&body).map_err(|detail| BlobError::Protocol {
            operation: "ListBlobs",
            resource,
            detail,
        })
    }

    /// A lazy pager over every page of a listing.
    pub fn list_pager(&self, opts: ListOptions) -> ListPager {
        ListPager {
            client: self.clone(),
            opts,
            done: false,
        }
    }

    /// Send a small-response request (listings, block lists) and read its
    /// whole body. A body cut off mid-way (reset, truncation) is retried like
    /// any transient failure: these reads are idempotent.
    async fn execute_with_body(&self, call: Call<'_>) -> Result<(HeaderMap, Bytes), BlobError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self.execute(call.clone()).await?;
            let headers = resp.headers().clone();
            let counters = self.inner.stats.op(call.op);
            match resp.bytes().await {
                Ok(b) => {
                    RequestStats::add(&counters.bytes_in, b.len() as u64);
                    return Ok((headers, b));
                }
                Err(e)
                    if attempt < self.inner.retry.max_attempts
                        && started.elapsed() < self.inner.retry.deadline =>
                {
                    RequestStats::add(&counters.faults, 1);
                    RequestStats::add(&counters.retries, 1);
                    let delay = self.inner.retry.delay(attempt, None);
                    tracing::info!(op = call.op, resource = %call.resource, attempt, error = %e, "response body cut off; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    RequestStats::add(&counters.faults, 1);
                    let err = BlobError::Transport {
                        operation: call.op,
                        resource: call.resource.clone(),
                        kind: transport_kind(&e),
                        attempts: attempt,
                        elapsed: started.elapsed(),
                        source: Box::new(e),
                    };
                    self.record_failure(&err);
                    return Err(err);
                }
            }
        }
    }

    // --------------------------------------------------------------------- blob

    pub async fn get_blob_properties(
        &self,
        name: &str,
        key: Option<&CustomerKey>,
        cond: &Conditions,
    ) -> Result<BlobProperties, BlobError> {
        let call = Call::new(
            "GetBlobProperties",
            Method::HEAD,
            self.blob_url(name, &[]),
            self.res(name),
        )
        .key(key)
        .conditions(cond);
        let resp = self.execute(call).await?;
        Ok(properties_from_headers(resp.headers(), resp.status()))
    }

    /// Start a streamed download. `range` limits it; `cond` applies to the
    /// first request, later resumptions always use If-Match on the ETag.
    pub async fn get_blob(
        &self,
        name: &str,
        range: Option<ByteRange>,
        key: Option<&CustomerKey>,
        cond: &Conditions,
    ) -> Result<BlobDownload, BlobError> {
        let resp = match self.get_blob_response(name, range, key, cond).await {
            Err(e) if e.status() == Some(416) && range.map(|r| r.start) == Some(0) => {
                // Any range on an empty blob is 416 on Azure: read it whole.
                self.get_blob_response(name, None, key, cond).await?
            }
            other => other?,
        };
        let status = resp.status();
        let properties = properties_from_headers(resp.headers(), status);
        let body_len: u64 = header_str(resp.headers(), "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let start = if status == StatusCode::PARTIAL_CONTENT {
            range.map(|r| r.start).unwrap_or(0)
        } else {
            0
        };
        Ok(BlobDownload {
            client: self.clone(),
            name: name.to_string(),
            key: key.cloned(),
            etag: properties.etag.clone(),
            offset: start,
            end: start + body_len,
            properties,
            resp: Some(resp),
            resumes: 0,
        })
    }

    async fn get_blob_response(
        &self,
        name: &str,
        range: Option<ByteRange>,
        key: Option<&CustomerKey>,
        cond: &Conditions,
    ) -> Result<reqwest::Response, BlobError> {
        let mut call = Call::new(
            "GetBlob",
            Method::GET,
            self.blob_url(name, &[]),
            self.res(name),
        )
        .key(key)
        .conditions(cond);
        if let Some(r) = range {
            call = call.header("x-ms-range", r.header());
        }
        self.execute(call).await
    }

    /// Read a range whole into memory (used for cache blocks of bounded size).
    pub async fn read_range(
        &self,
        name: &str,
        range: ByteRange,
        key: Option<&CustomerKey>,
        cond: &Conditions,
    ) -> Result<(Bytes, BlobProperties), BlobError> {
        let mut dl = self.get_blob(name, Some(range), key, cond).await?;
        let len = dl.end - dl.offset;
        let mut buf = bytes::BytesMut::with_capacity(len as usize);
        while let Some(chunk) = dl.next_chunk().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok((buf.freeze(), dl.properties))
    }

    /// The second half of "a retried write met a conflict: was it our own
    /// earlier attempt?" (Put Blob and Put Block List each decide the first
    /// half their own way): HEAD the blob and, if `is_ours` recognises what
    /// is stored, report that version as this write's result.
    async fn adopt_if_ours(
        &self,
        name: &str,
        key: Option<&CustomerKey>,
        is_ours: impl FnOnce(&BlobProperties) -> bool,
    ) -> Option<WriteResult> {
        let p = self
            .get_blob_properties(name, key, &Conditions::default())
            .await
            .ok()?;
        if !is_ours(&p) {
            return None;
        }
        Some(WriteResult {
            etag: p.etag,
            last_modified: p.last_modified,
            cpk_sha256: p.cpk_sha256,
        })
    }

    pub async fn put_blob(
        &self,
        name: &str,
        body: Bytes,
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
    ) -> Result<WriteResult, BlobError> {
        let mut call = Call::new(
            "PutBlob",
            Method::PUT,
            self.blob_url(name, &[]),
            self.res(name),
        )
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-content-crc64", super::crc64::crc64_header(&body))
        .key(key)
        .conditions(&opts.conditions)
        .metadata(&opts.metadata)?
        .tags(opts.tags.as_ref())?
        .body(body.clone());
        if let Some(ct) = &opts.content_type {
            call = call.header("x-ms-blob-content-type", ct);
        }
        match self.execute(call).await {
            Ok(resp) => Ok(write_result(resp.headers())),
            // A conditional Put Blob that was retried after a lost answer
            // meets its own success as 412/409. The service stores the MD5 of
            // what Put Blob received: if it is ours, the write is ours.
            Err(e)
                if !opts.conditions.is_empty()
                    && was_retried(&e)
                    && (e.status() == Some(412) || e.is_code("BlobAlreadyExists")) =>
            {
                use base64::Engine;
                use md5::Digest;
                let ours =
                    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body));
                let same = |p: &BlobProperties| {
                    p.content_md5.as_deref() == Some(ours.as_str())
                        && p.content_length == body.len() as u64
                };
                self.adopt_if_ours(name, key, same).await.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn put_block(
        &self,
        name: &str,
        block_id: &str,
        body: Bytes,
        key: Option<&CustomerKey>,
    ) -> Result<(), BlobError> {
        let call = Call::new(
            "PutBlock",
            Method::PUT,
            self.blob_url(name, &[("comp", "block"), ("blockid", block_id)]),
            self.res(name),
        )
        .header("x-ms-content-crc64", super::crc64::crc64_header(&body))
        .key(key)
        .body(body);
        self.execute(call).await.map(|_| ())
    }

    /// Commit a block list. A commit replaces content type and metadata, so
    /// `opts` must carry the full set. If a retried commit meets 412/409 (its
    /// first attempt may have succeeded with the answer lost), the committed
    /// list is compared with ours to tell.
    pub async fn put_block_list(
        &self,
        name: &str,
        blocks: &[BlockRef],
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
    ) -> Result<WriteResult, BlobError> {
        let body = Bytes::from(xml::block_list_body(blocks));
        let mut call = Call::new(
            "PutBlockList",
            Method::PUT,
            self.blob_url(name, &[("comp", "blocklist")]),
            self.res(name),
        )
        .header("x-ms-content-crc64", super::crc64::crc64_header(&body))
        .header("content-type", "application/xml")
        .key(key)
        .conditions(&opts.conditions)
        .metadata(&opts.metadata)?
        .tags(opts.tags.as_ref())?
        .body(body);
        if let Some(ct) = &opts.content_type {
            call = call.header("x-ms-blob-content-type", ct);
        }
        match self.execute(call).await {
            Ok(resp) => Ok(write_result(resp.headers())),
            Err(e)
                if was_retried(&e)
                    && ((!opts.conditions.is_empty()
                        && matches!(e.status(), Some(412) | Some(409)))
                        || e.is_code("InvalidBlockList")) =>
            {
                // Did an earlier attempt of ours win? Same ids in the same order.
                let ids: Vec<&str> = blocks
                    .iter()
                    .map(|b| match b {
                        BlockRef::Committed(i) | BlockRef::Uncommitted(i) | BlockRef::Latest(i) => {
                            i.as_str()
                        }
                    })
                    .collect();
                if let Ok(list) = self.get_block_list(name, BlockListType::All).await {
                    let committed: Vec<&str> =
                        list.committed.iter().map(|b| b.id.as_str()).collect();
                    if !ids.is_empty() && committed == ids && list.uncommitted.is_empty() {
                        if let Some(w) = self.adopt_if_ours(name, key, |_| true).await {
                            return Ok(w);
                        }
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn get_block_list(
        &self,
        name: &str,
        which: BlockListType,
    ) -> Result<BlockList, BlobError> {
        let call = Call::new(
            "GetBlockList",
            Method::GET,
            self.blob_url(
                name,
                &[("comp", "blocklist"), ("blocklisttype", which.as_str())],
            ),
            self.res(name),
        );
        let resource = call.resource.clone();
        let (headers, body) = self.execute_with_body(call).await?;
        let etag = header_str(&headers, "etag").map(quote_etag);
        let mut list = xml::parse_block_list(&body).map_err(|detail| BlobError::Protocol {
            operation: "GetBlockList",
            resource,
            detail,
        })?;
        list.etag = etag;
        Ok(list)
    }

    /// Delete a blob. A retried delete that meets 404 counts as done.
    pub async fn delete_blob(&self, name: &str, cond: &Conditions) -> Result<(), BlobError> {
        let call = Call::new(
            "DeleteBlob",
            Method::DELETE,
            self.blob_url(name, &[]),
            self.res(name),
        )
        .conditions(cond);
        self.execute(call).await.map(|_| ())
    }

    /// Set Blob Tags: replace the blob's index tags. Takes no key (tags are
    /// not encrypted) and leaves the ETag as it is.
    pub async fn set_blob_tags(&self, name: &str, tags: &Metadata) -> Result<(), BlobError> {
        crate::tags::check(tags).map_err(BlobError::Config)?;
        let call = Call::new(
            "SetBlobTags",
            Method::PUT,
            self.blob_url(name, &[("comp", "tags")]),
            self.res(name),
        )
        .header("content-type", "application/xml")
        .body(Bytes::from(crate::tags::body(tags)));
        self.execute(call).await.map(|_| ())
    }

    /// Get Blob Tags: the blob's index tags.
    pub async fn get_blob_tags(&self, name: &str) -> Result<Metadata, BlobError> {
        let call = Call::new(
            "GetBlobTags",
            Method::GET,
            self.blob_url(name, &[("comp", "tags")]),
            self.res(name),
        );
        let resource = call.resource.clone();
        let (_, body) = self.execute_with_body(call).await?;
        xml::parse_tags(&body).map_err(|detail| BlobError::Protocol {
            operation: "GetBlobTags",
            resource,
            detail,
        })
    }

    pub async fn set_blob_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
        key: Option<&CustomerKey>,
        cond: &Conditions,
    ) -> Result<WriteResult, BlobError> {
        let call = Call::new(
            "SetBlobMetadata",
            Method::PUT,
            self.blob_url(name, &[("comp", "metadata")]),
            self.res(name),
        )
        .key(key)
        .conditions(cond)
        .metadata(metadata)?;
        match self.execute(call).await {
            Ok(resp) => Ok(write_result(resp.headers())),
            // A conditional update retried after a lost answer meets its own
            // success as 412: if the blob now carries exactly this metadata,
            // the update is ours.
            Err(e)
                if cond.if_match.is_some()
                    && e.status() == Some(412)
                    && e.service().is_some_and(|s| s.attempts > 1) =>
            {
                let want: Metadata = metadata
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                match self
                    .get_blob_properties(name, key, &Conditions::default())
                    .await
                {
                    Ok(p)
                        if p.metadata
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect::<Metadata>()
                            == want =>
                    {
                        Ok(WriteResult {
                            etag: p.etag,
                            last_modified: p.last_modified,
                            cpk_sha256: p.cpk_sha256,
                        })
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Set HTTP properties; unsent properties are cleared by the service.
    pub async fn set_blob_properties(
        &self,
        name: &str,
        content_type: Option<&str>,
        cond: &Conditions,
    ) -> Result<WriteResult, BlobError> {
        let mut call = Call::new(
            "SetBlobProperties",
            Method::PUT,
            self.blob_url(name, &[("comp", "properties")]),
            self.res(name),
        )
        .conditions(cond);
        if let Some(ct) = content_type {
            call = call.header("x-ms-blob-content-type", ct);
        }
        let resp = self.execute(call).await?;
        Ok(write_result(resp.headers()))
    }

    /// The URL by which the service reads `name` as a copy source. With an account
    /// key: a service SAS for that one blob, read-only, valid from 5 minutes ago
    /// (clock skew) for [`SOURCE_SAS_LIFETIME`] — the service reads the source while
    /// it handles the request, so the token is of no use for long. With a SAS
    /// credential: the mount's own token.
    fn source_url(&self, name: &str) -> Url {
        let mut url = self.blob_url(name, &[]);
        let token = match &self.inner.credential {
            Credential::Sas(t) => t.expose().to_string(),
            Credential::SharedKey(cred) => {
                let now = self.inner.clock.now();
                let start = iso8601(now - Duration::from_secs(300));
                let expiry = iso8601(now + SOURCE_SAS_LIFETIME);
                let (_, key) = cred.current();
                super::sas::ServiceSas {
                    account: cred.account(),
                    container: &self.inner.container,
                    blob: Some(name),
                    permissions: "r",
                    start: Some(&start),
                    expiry: &expiry,
                    protocol: if self.inner.endpoint.is_https() {
                        "https"
                    } else {
                        "https,http"
                    },
                    version: API_VERSION,
                }
                .token(&key)
            }
        };
        url.set_query(Some(&token));
        url
    }

    /// A From-URL request reading `src`: its URL (a secret: it carries a SAS), its
    /// key and the version that can carry that key, and its ETag pin.
    fn with_copy_source<'a>(&self, mut call: Call<'a>, src: &CopySource<'a>) -> Call<'a> {
        let mut v =
            HeaderValue::from_str(self.source_url(src.name).as_str()).expect("URL is ASCII");
        v.set_sensitive(true);
        call.headers
            .insert(HeaderName::from_static("x-ms-copy-source"), v);
        if let Some(k) = src.key {
            call.source_key = Some(k);
            call.version = SOURCE_CPK_VERSION;
        }
        if let Some(e) = src.if_match {
            call = call.header("x-ms-source-if-match", quote_etag(e));
        }
        call
    }

    /// Put Blob From URL: the service writes `dest` from `src` (≤ 5,000 MiB) and
    /// re-encrypts it with `key`; no blob bytes pass through the client. A CPK
    /// source needs service version 2026-02-06 (see
    /// [`BlobError::is_source_cpk_unsupported`]). `opts` carries the full metadata
    /// and content type (the source's are not copied). Returns the write and the
    /// CRC-64 of the content if the service reports one.
    pub async fn put_blob_from_url(
        &self,
        dest: &str,
        src: &CopySource<'_>,
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
    ) -> Result<(WriteResult, Option<String>), BlobError> {
        let call = Call::new(
            "PutBlobFromUrl",
            Method::PUT,
            self.blob_url(dest, &[]),
            self.res(dest),
        )
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-copy-source-blob-properties", "false")
        .key(key)
        .conditions(&opts.conditions)
        .metadata(&opts.metadata)?
        .tags(opts.tags.as_ref())?;
        let mut call = self.with_copy_source(call, src);
        if let Some(ct) = &opts.content_type {
            call = call.header("x-ms-blob-content-type", ct);
        }
        let resp = self.execute(call).await?;
        let crc = header_str(resp.headers(), "x-ms-content-crc64").map(str::to_string);
        Ok((write_result(resp.headers()), crc))
    }

    /// Put Block From URL: stage `range` of `src` (≤ 4,000 MiB) as block
    /// `block_id` of `dest`, encrypted with `key`. Returns the CRC-64 the service
    /// reports for the block, if any.
    pub async fn put_block_from_url(
        &self,
        dest: &str,
        block_id: &str,
        src: &CopySource<'_>,
        range: ByteRange,
        key: Option<&CustomerKey>,
    ) -> Result<Option<String>, BlobError> {
        let call = Call::new(
            "PutBlockFromUrl",
            Method::PUT,
            self.blob_url(dest, &[("comp", "block"), ("blockid", block_id)]),
            self.res(dest),
        )
        .header("x-ms-source-range", range.header())
        .key(key);
        let call = self.with_copy_source(call, src);
        let resp = self.execute(call).await?;
        Ok(header_str(resp.headers(), "x-ms-content-crc64").map(str::to_string))
    }

    /// Server-side copy within the container (not for CPK sources: the
    /// service refuses them with CannotVerifyCopySource).
    pub async fn copy_blob(
        &self,
        dest: &str,
        source: &str,
        metadata: Option<&Metadata>,
    ) -> Result<CopyResult, BlobError> {
        let mut src = self.blob_url(source, &[]);
        if let Credential::Sas(t) = &self.inner.credential {
            src.set_query(Some(t.expose()));
        }
        let mut call = Call::new(
            "CopyBlob",
            Method::PUT,
            self.blob_url(dest, &[]),
            self.res(dest),
        )
        .header("x-ms-copy-source", src.as_str());
        if let Some(md) = metadata {
            call = call.metadata(md)?;
        }
        let resp = self.execute(call).await?;
        let h = resp.headers();
        Ok(CopyResult {
            copy_id: header_str(h, "x-ms-copy-id").map(str::to_string),
            copy_status: header_str(h, "x-ms-copy-status").map(str::to_string),
            etag: header_str(h, "etag").map(quote_etag),
        })
    }
}

/// Pages through a listing lazily, following NextMarker.
pub struct ListPager {
    client: BlobClient,
    opts: ListOptions,
    done: bool,
}

impl ListPager {
    pub async fn next_page(&mut self) -> Result<Option<ListPage>, BlobError> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.list_blobs(&self.opts).await?;
        match &page.next_marker {
            Some(m) => self.opts.marker = Some(m.clone()),
            None => self.done = true,
        }
        Ok(Some(page))
    }
}

/// A streamed download that resumes from the byte it reached, with If-Match
/// on the ETag, when the connection breaks.
pub struct BlobDownload {
    client: BlobClient,
    name: String,
    key: Option<CustomerKey>,
    etag: String,
    /// Next byte offset (absolute) to deliver.
    offset: u64,
    /// End offset (exclusive) of what this download covers.
    end: u64,
    pub properties: BlobProperties,
    resp: Option<reqwest::Response>,
    resumes: u32,
}

impl BlobDownload {
    /// Bytes remaining.
    pub fn remaining(&self) -> u64 {
        self.end - self.offset
    }

    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, BlobError> {
        loop {
            if self.offset >= self.end {
                return Ok(None);
            }
            let err = match self.resp.as_mut() {
                Some(resp) => match resp.chunk().await {
                    Ok(Some(c)) => {
                        let c = if c.len() as u64 > self.end - self.offset {
                            c.slice(..(self.end - self.offset) as usize)
                        } else {
                            c
                        };
                        self.offset += c.len() as u64;
                        RequestStats::add(
                            &self.client.inner.stats.op("GetBlob").bytes_in,
                            c.len() as u64,
                        );
                        return Ok(Some(c));
                    }
                    Ok(None) => "the connection ended before the promised length".to_string(),
                    Err(e) => e.to_string(),
                },
                None => "no response".to_string(),
            };
            self.resp = None;
            self.resumes += 1;
            let counters = self.client.inner.stats.op("GetBlob");
            RequestStats::add(&counters.faults, 1);
            if self.resumes > self.client.inner.retry.max_attempts {
                let err = BlobError::Transport {
                    operation: "GetBlob",
                    resource: self.client.res(&self.name),
                    kind: TransportKind::Io,
                    attempts: self.resumes,
                    elapsed: Duration::ZERO,
                    source: err.into(),
                };
                self.client.record_failure(&err);
                return Err(err);
            }
            RequestStats::add(&counters.retries, 1);
            tracing::info!(blob = %self.name, offset = self.offset, error = %err, "download interrupted; resuming");
            let range = ByteRange::new(self.offset, self.end);
            match self
                .client
                .get_blob_response(
                    &self.name,
                    Some(range),
                    self.key.as_ref(),
                    &Conditions::if_match(self.etag.clone()),
                )
                .await
            {
                Ok(r) => self.resp = Some(r),
                Err(e) if e.status() == Some(412) => {
                    return Err(BlobError::Changed {
                        operation: "GetBlob",
                        resource: self.client.res(&self.name),
                        expected: self.etag.clone(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_sas_times() {
        let t = |s: u64| iso8601(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        // 2024-03-01T00:00:00Z (the reference's SAS vector), a leap day, a year end
        assert_eq!(t(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(t(1_709_164_800 + 3661), "2024-02-29T01:01:01Z");
        assert_eq!(t(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn unsupported_source_cpk_is_recognised() {
        let err = |status: u16, code: &str| {
            BlobError::Service(Box::new(ServiceError {
                operation: "PutBlobFromUrl",
                resource: "c/a".into(),
                status,
                code: Some(code.into()),
                message: String::new(),
                request_id: None,
                mac_mismatch: false,
                attempts: 1,
            }))
        };
        // Azure / Azurite for an unknown x-ms-version or source-key header
        assert!(err(400, "InvalidHeaderValue").is_source_cpk_unsupported());
        assert!(err(500, "FeatureNotSupported").is_source_cpk_unsupported());
        // a service that has the feature refusing a key: not a fallback case
        assert!(!err(409, "BlobUsesCustomerSpecifiedEncryption").is_source_cpk_unsupported());
        assert!(!err(409, "CannotVerifyCopySource").is_source_cpk_unsupported());
        assert!(!err(412, "SourceConditionNotMet").is_source_cpk_unsupported());
    }
}
