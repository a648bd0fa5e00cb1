//! Wire-level tests of the bundled emulator, driven with hand-signed raw requests.
//! The signer below is deliberately separate from both the emulator and `crate::blob`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cpkfs_emulator::{
    self as emulator, EmulatorConfig, EmulatorHandle, DEV_ACCOUNT, DEV_KEY1, DEV_KEY2,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const VERSION: &str = "2021-08-06";

struct Client {
    http: reqwest::Client,
    base: String,
    account: String,
    key: Vec<u8>,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn code(&self) -> &str {
        self.headers
            .get("x-ms-error-code")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn h(&self, n: &str) -> Option<&str> {
        self.headers.get(n).map(|v| v.to_str().unwrap())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn sign(
    key: &[u8],
    account: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
) -> String {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut sts = format!("{method}\n");
    for h in [
        "content-encoding",
        "content-language",
        "content-length",
        "content-md5",
        "content-type",
        "date",
        "if-modified-since",
        "if-match",
        "if-none-match",
        "if-unmodified-since",
        "range",
    ] {
        let v = get(h);
        if !(h == "content-length" && v == "0") {
            sts.push_str(&v);
        }
        sts.push('\n');
    }
    let mut xms: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ms-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    xms.sort();
    for (k, v) in xms {
        sts.push_str(&format!("{k}:{v}\n"));
    }
    sts.push_str(&format!("/{account}{path}"));
    let mut q: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    q.sort();
    for (k, v) in q {
        sts.push_str(&format!("\n{k}:{v}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(sts.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

impl Client {
    fn new(h: &EmulatorHandle, key_b64: &str) -> Client {
        Client::from_parts(&h.url, h.ca_pem.as_deref(), key_b64, 0)
    }

    fn from_parts(url: &str, ca_pem: Option<&str>, key_b64: &str, idle: usize) -> Client {
        let mut b = reqwest::Client::builder().pool_max_idle_per_host(idle);
        if let Some(pem) = ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        Client {
            http: b.build().unwrap(),
            base: url.to_string(),
            account: DEV_ACCOUNT.to_string(),
            key: B64.decode(key_b64).unwrap(),
        }
    }

    async fn send_raw(
        &self,
        method: &str,
        path_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        auth: bool,
    ) -> Result<Resp, reqwest::Error> {
        let r = self
            .request(method, path_query, headers, body, auth)
            .send()
            .await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    /// A signed request, ready to send (for reading the response as a stream).
    fn request(
        &self,
        method: &str,
        path_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        auth: bool,
    ) -> reqwest::RequestBuilder {
        let path_query = format!("/{}{}", self.account, path_query);
        let (path, query) = path_query.split_once('?').unwrap_or((&path_query, ""));
        let mut hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        hs.push((
            "x-ms-date".into(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        ));
        if !hs.iter().any(|(k, _)| k == "x-ms-version") {
            hs.push(("x-ms-version".into(), VERSION.into()));
        }
        if method == "PUT" || method == "POST" {
            hs.push(("content-length".into(), body.len().to_string()));
        }
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self.http.request(m, format!("{}{}", self.base, path_query));
        if auth {
            let sig = sign(&self.key, &self.account, method, path, query, &hs);
            rb = rb.header("authorization", format!("SharedKey {}:{sig}", self.account));
        }
        for (k, v) in &hs {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if method == "PUT" || method == "POST" {
            rb = rb.body(body);
        }
        rb
    }

    async fn send(&self, method: &str, pq: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        self.send_raw(method, pq, headers, body, true)
            .await
            .unwrap()
    }
}

struct Key {
    key: String,
    sha: String,
}

fn cpk(raw: &[u8; 32]) -> Key {
    Key {
        key: B64.encode(raw),
        sha: B64.encode(Sha256::digest(raw)),
    }
}

fn cpk_headers(k: &Key) -> Vec<(&str, &str)> {
    vec![
        ("x-ms-encryption-key", k.key.as_str()),
        ("x-ms-encryption-key-sha256", k.sha.as_str()),
        ("x-ms-encryption-algorithm", "AES256"),
    ]
}

async fn start_default() -> (EmulatorHandle, Client) {
    let h = emulator::start(EmulatorConfig::default()).await.unwrap();
    let c = Client::new(&h, DEV_KEY1);
    let r = c.send("PUT", "/ct1?restype=container", &[], vec![]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    (h, c)
}

#[tokio::test]
async fn bad_signature_gives_azure_403_and_no_auth_401() {
    let (h, c) = start_default().await;
    let bad = Client::new(&h, DEV_KEY2.replace('Q', "R").as_str());
    let r = bad.send("GET", "/ct1?restype=container", &[], vec![]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "AuthenticationFailed");
    let t = r.text();
    assert!(t.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request."), "{t}");
    assert!(t.contains("\nRequestId:"), "{t}");
    assert!(t.contains("\nTime:"), "{t}");
    assert!(
        t.contains("<AuthenticationErrorDetail>The MAC signature found in the HTTP request"),
        "{t}"
    );
    assert!(
        t.contains("Server used following string to sign: 'GET\n"),
        "{t}"
    );
    assert!(
        t.contains("/devstoreaccount1/devstoreaccount1/ct1\nrestype:container'."),
        "{t}"
    );
    assert!(r.h("x-ms-request-id").is_some());
    assert_eq!(
        r.h("server"),
        Some("Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0")
    );

    // key2 works too
    let c2 = Client::new(&h, DEV_KEY2);
    let r = c2.send("GET", "/ct1?restype=container", &[], vec![]).await;
    assert_eq!(r.status, 200);

    let r = c
        .send_raw("GET", "/ct1?restype=container", &[], vec![], false)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "NoAuthenticationInformation");

    // HEAD errors have no body
    let r = bad.send("HEAD", "/ct1/x", &[], vec![]).await;
    assert_eq!(r.status, 403);
    assert!(r.body.is_empty());

    // version checks and echo
    let r = c
        .send(
            "GET",
            "/ct1?restype=container",
            &[("x-ms-version", "2018-03-28")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidHeaderValue");
    assert!(r.text().contains("<HeaderName>x-ms-version</HeaderName>"));
    let r = c
        .send(
            "GET",
            "/ct1?restype=container",
            &[
                ("x-ms-version", "2020-04-08"),
                ("x-ms-client-request-id", "abc"),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("x-ms-version"), Some("2020-04-08"));
    assert_eq!(r.h("x-ms-client-request-id"), Some("abc"));
    h.shutdown().await;
}

#[tokio::test]
async fn cpk_409_codes_and_roundtrip() {
    let (h, c) = start_default().await;
    let k = cpk(&[1u8; 32]);
    let k2 = cpk(&[2u8; 32]);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut hs = cpk_headers(&k);
    hs.push(("x-ms-blob-type", "BlockBlob"));
    hs.push(("x-ms-meta-mode", "0644"));
    let r = c.send("PUT", "/ct1/dir/enc.bin", &hs, data.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.h("x-ms-request-server-encrypted"), Some("true"));
    assert_eq!(r.h("x-ms-encryption-key-sha256"), Some(k.sha.as_str()));

    let r = c.send("GET", "/ct1/dir/enc.bin", &[], vec![]).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    let r = c
        .send("GET", "/ct1/dir/enc.bin", &cpk_headers(&k2), vec![])
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobCustomerSpecifiedEncryptionMismatch")
    );
    let r = c.send("HEAD", "/ct1/dir/enc.bin", &[], vec![]).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    assert!(r.body.is_empty());
    let r = c
        .send("HEAD", "/ct1/dir/enc.bin", &cpk_headers(&k), vec![])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.h("content-length"), Some("3000000"));
    assert_eq!(r.h("x-ms-meta-mode"), Some("0644"));
    assert_eq!(r.h("x-ms-server-encrypted"), Some("true"));
    assert_eq!(r.h("x-ms-encryption-key-sha256"), Some(k.sha.as_str()));

    let r = c
        .send("GET", "/ct1/dir/enc.bin", &cpk_headers(&k), vec![])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body == data);
    let mut hs = cpk_headers(&k);
    hs.push(("x-ms-range", "bytes=1048570-2100000"));
    let r = c.send("GET", "/ct1/dir/enc.bin", &hs, vec![]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.h("content-range"), Some("bytes 1048570-2100000/3000000"));
    assert!(r.body[..] == data[1048570..=2100000]);

    // non-CPK blob with a key
    let r = c
        .send(
            "PUT",
            "/ct1/plain",
            &[("x-ms-blob-type", "BlockBlob")],
            b"hi".to_vec(),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.h("x-ms-content-crc64").is_some());
    let r = c.send("GET", "/ct1/plain", &cpk_headers(&k), vec![]).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobDoesNotUseCustomerSpecifiedEncryption")
    );
    let r = c.send("HEAD", "/ct1/plain", &cpk_headers(&k), vec![]).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobDoesNotUseCustomerSpecifiedEncryption")
    );
    assert!(r.body.is_empty());

    // Set metadata needs the key; Set properties / Get Block List / Delete do not.
    let r = c
        .send(
            "PUT",
            "/ct1/dir/enc.bin?comp=metadata",
            &[("x-ms-meta-a", "b")],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    let r = c
        .send(
            "PUT",
            "/ct1/dir/enc.bin?comp=properties",
            &[("x-ms-blob-content-type", "text/plain")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // listing shows the key hash and hides metadata
    let r = c
        .send(
            "GET",
            "/ct1?restype=container&comp=list&include=metadata",
            &[],
            vec![],
        )
        .await;
    let t = r.text();
    assert!(
        t.contains(&format!(
            "<CustomerProvidedKeySha256>{}</CustomerProvidedKeySha256>",
            k.sha
        )),
        "{t}"
    );
    assert!(t.contains("<Metadata Encrypted=\"true\" />"), "{t}");

    // blocks: staged with K, then a block without key -> 409, commit without key -> 409
    let id1 = B64.encode(b"blk-0001");
    let id2 = B64.encode(b"blk-0002");
    let q1 = format!("/ct1/b2?comp=block&blockid={}", urlenc(&id1));
    let q2 = format!("/ct1/b2?comp=block&blockid={}", urlenc(&id2));
    let r = c
        .send("PUT", &q1, &cpk_headers(&k), b"hello ".to_vec())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.send("PUT", &q2, &[], b"world".to_vec()).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    let r = c
        .send("PUT", &q2, &cpk_headers(&k2), b"world".to_vec())
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobCustomerSpecifiedEncryptionMismatch")
    );
    let r = c
        .send("PUT", &q2, &cpk_headers(&k), b"world".to_vec())
        .await;
    assert_eq!(r.status, 201);
    let xml = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{id1}</Latest><Uncommitted>{id2}</Uncommitted></BlockList>");
    let r = c
        .send(
            "PUT",
            "/ct1/b2?comp=blocklist",
            &[],
            xml.clone().into_bytes(),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    let r = c.send("GET", "/ct1/b2", &cpk_headers(&k), vec![]).await;
    assert_eq!(r.status, 404, "uncommitted blob is invisible");
    let r = c
        .send(
            "GET",
            "/ct1/b2?comp=blocklist&blocklisttype=all",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<CommittedBlocks />"), "{}", r.text());
    assert!(r
        .text()
        .contains(&format!("<Block><Name>{id1}</Name><Size>6</Size></Block>")));
    let r = c
        .send(
            "PUT",
            "/ct1/b2?comp=blocklist",
            &cpk_headers(&k),
            xml.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c.send("GET", "/ct1/b2", &cpk_headers(&k), vec![]).await;
    assert_eq!(r.text(), "hello world");
    let r = c.send("DELETE", "/ct1/b2", &[], vec![]).await;
    assert_eq!(r.status, 202);

    // copy of a CPK source
    let src = format!("{}/{}/ct1/dir/enc.bin", h.url, DEV_ACCOUNT);
    let r = c
        .send(
            "PUT",
            "/ct1/copy",
            &[("x-ms-copy-source", src.as_str())],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "CannotVerifyCopySource"));
    let src = format!("{}/{}/ct1/plain", h.url, DEV_ACCOUNT);
    let r = c
        .send(
            "PUT",
            "/ct1/copy",
            &[("x-ms-copy-source", src.as_str())],
            vec![],
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.h("x-ms-copy-status"), Some("success"));
    let r = c.send("GET", "/ct1/copy", &[], vec![]).await;
    assert_eq!(r.text(), "hi");
    h.shutdown().await;
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn cpk_over_http_is_refused() {
    let cfg = EmulatorConfig {
        tls: false,
        ..Default::default()
    };
    let h = emulator::start(cfg).await.unwrap();
    assert!(h.url.starts_with("http://"));
    assert!(h.ca_pem.is_none());
    let c = Client::new(&h, DEV_KEY1);
    assert_eq!(
        c.send("PUT", "/ct1?restype=container", &[], vec![])
            .await
            .status,
        201
    );
    let k = cpk(&[3u8; 32]);
    let mut hs = cpk_headers(&k);
    hs.push(("x-ms-blob-type", "BlockBlob"));
    let r = c.send("PUT", "/ct1/a", &hs, b"x".to_vec()).await;
    assert_eq!((r.status, r.code()), (400, "AccountRequiresHttps"));
    h.shutdown().await;

    let cfg = EmulatorConfig {
        tls: false,
        allow_cpk_over_http: true,
        ..Default::default()
    };
    let h = emulator::start(cfg).await.unwrap();
    let c = Client::new(&h, DEV_KEY1);
    assert_eq!(
        c.send("PUT", "/ct1?restype=container", &[], vec![])
            .await
            .status,
        201
    );
    let r = c.send("PUT", "/ct1/a", &hs, b"x".to_vec()).await;
    assert_eq!(r.status, 201);
    h.shutdown().await;
}

async fn admin(
    h: &EmulatorHandle,
    c: &Client,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = c
        .http
        .request(m, format!("{}{}", h.url, path))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn admin_stats_faults_and_key_regeneration() {
    let (h, c) = start_default().await;
    let (s, _) = admin(&h, &c, "DELETE", "/__admin/stats", "").await;
    assert_eq!(s, 204);
    c.send(
        "PUT",
        "/ct1/a",
        &[("x-ms-blob-type", "BlockBlob")],
        vec![7u8; 1000],
    )
    .await;
    c.send("GET", "/ct1/a", &[], vec![]).await;
    c.send("GET", "/ct1/a", &[], vec![]).await;
    c.send("GET", "/ct1/missing", &[], vec![]).await;
    let (s, body) = admin(&h, &c, "GET", "/__admin/stats", "").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["requests"]["PutBlob"], 1);
    assert_eq!(v["requests"]["GetBlob"], 3);
    assert_eq!(v["total_requests"], 4);
    assert_eq!(v["bytes_in"], 1000);
    assert!(v["bytes_out"].as_u64().unwrap() >= 2000);

    // faults: always 503 on GetBlob only
    let (s, echo) = admin(
        &h,
        &c,
        "POST",
        "/__admin/faults",
        r#"{"rate":1.0,"kinds":["503"],"seed":1,"operations":["GetBlob"]}"#,
    )
    .await;
    assert_eq!(s, 200, "{echo}");
    let r = c.send("GET", "/ct1/a", &[], vec![]).await;
    assert_eq!((r.status, r.code()), (503, "ServerBusy"));
    assert_eq!(r.h("retry-after"), Some("1"));
    let r = c.send("HEAD", "/ct1/a", &[], vec![]).await;
    assert_eq!(r.status, 200);
    // reset: no response at all, and the request is not performed
    admin(
        &h,
        &c,
        "POST",
        "/__admin/faults",
        r#"{"rate":1.0,"kinds":["reset"],"seed":1}"#,
    )
    .await;
    let r = c.send_raw("DELETE", "/ct1/a", &[], vec![], true).await;
    assert!(r.is_err());
    // truncate: body cut short
    admin(
        &h,
        &c,
        "POST",
        "/__admin/faults",
        r#"{"rate":1.0,"kinds":["truncate"],"seed":1,"operations":["GetBlob"]}"#,
    )
    .await;
    let r = c.send_raw("GET", "/ct1/a", &[], vec![], true).await;
    assert!(r.is_err());
    let (s, _) = admin(&h, &c, "DELETE", "/__admin/faults", "").await;
    assert_eq!(s, 204);
    let r = c.send("GET", "/ct1/a", &[], vec![]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1000);
    let (_, body) = admin(&h, &c, "GET", "/__admin/stats", "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["faults_injected"], 3);

    // seeded decisions are deterministic
    let mut seqs = Vec::new();
    for _ in 0..2 {
        admin(
            &h,
            &c,
            "POST",
            "/__admin/faults",
            r#"{"rate":0.5,"kinds":["500"],"seed":42}"#,
        )
        .await;
        let mut seq = Vec::new();
        for _ in 0..12 {
            seq.push(c.send("HEAD", "/ct1/a", &[], vec![]).await.status);
        }
        seqs.push(seq);
    }
    assert_eq!(seqs[0], seqs[1]);
    assert!(seqs[0].contains(&500) && seqs[0].contains(&200));
    admin(&h, &c, "DELETE", "/__admin/faults", "").await;

    // regenerate key1: old key fails, new key works, key2 still works
    let (s, body) = admin(
        &h,
        &c,
        "POST",
        "/__admin/accounts/devstoreaccount1/regenerate-key?key=1",
        "",
    )
    .await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["which"], 1);
    let newkey = v["key"].as_str().unwrap();
    assert_eq!(B64.decode(newkey).unwrap().len(), 64);
    let r = c.send("HEAD", "/ct1/a", &[], vec![]).await;
    assert_eq!((r.status, r.code()), (403, "AuthenticationFailed"));
    let c_new = Client::new(&h, newkey);
    assert_eq!(c_new.send("HEAD", "/ct1/a", &[], vec![]).await.status, 200);
    assert_eq!(
        Client::new(&h, DEV_KEY2)
            .send("HEAD", "/ct1/a", &[], vec![])
            .await
            .status,
        200
    );
    h.shutdown().await;
}

/// Send `pq` and read the body chunk by chunk until it ends or fails.
/// Returns (status, Content-Length header, body bytes received, body ended cleanly).
async fn get_until_error(
    c: &Client,
    pq: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<u64>, Vec<u8>, bool) {
    let mut r = c
        .request("GET", pq, headers, vec![], true)
        .send()
        .await
        .expect("status line and headers must arrive");
    let status = r.status().as_u16();
    let len = r
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut got = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => return (status, len, got, true),
            Err(_) => return (status, len, got, false),
        }
    }
}

#[tokio::test]
async fn truncate_fault_delivers_headers_and_a_partial_body() {
    let (h, c) = start_default().await;
    let k = cpk(&[9u8; 32]);
    let kh = cpk_headers(&k);
    const N: usize = 8 << 20;
    let data: Vec<u8> = (0..N).map(|i| (i * 7 % 253) as u8).collect();
    for (blob, bs) in [("one", N), ("blocks", 3 << 20)] {
        // "one": a single 8 MiB block (Put Blob); "blocks": Put Block of 3+3+2 MiB.
        if bs == N {
            let mut hs = kh.clone();
            hs.push(("x-ms-blob-type", "BlockBlob"));
            let r = c
                .send("PUT", &format!("/ct1/{blob}"), &hs, data.clone())
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
        } else {
            let mut list = String::from("<BlockList>");
            for (i, part) in data.chunks(bs).enumerate() {
                let id = B64.encode(format!("{i:04}"));
                let r = c
                    .send(
                        "PUT",
                        &format!("/ct1/{blob}?comp=block&blockid={}", urlenc(&id)),
                        &kh,
                        part.to_vec(),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.text());
                list.push_str(&format!("<Latest>{id}</Latest>"));
            }
            list.push_str("</BlockList>");
            let r = c
                .send(
                    "PUT",
                    &format!("/ct1/{blob}?comp=blocklist"),
                    &kh,
                    list.into_bytes(),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text());
        }
    }
    let (s, body) = admin(
        &h,
        &c,
        "POST",
        "/__admin/faults",
        r#"{"rate":1.0,"kinds":["truncate"],"seed":1,"operations":["GetBlob"]}"#,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for blob in ["one", "blocks"] {
        let pq = format!("/ct1/{blob}");
        // whole blob: 200 with the full Content-Length, then a real partial body
        let (status, len, got, clean) = get_until_error(&c, &pq, &kh).await;
        assert_eq!(status, 200, "{blob}");
        assert_eq!(len, Some(N as u64), "{blob}");
        assert!(!clean, "{blob}: body must end with an error");
        assert!(
            !got.is_empty() && got.len() < N,
            "{blob}: {} body bytes",
            got.len()
        );
        assert!(
            got[..] == data[..got.len()],
            "{blob}: partial body is a prefix"
        );
        // a range: 206
        let mut hs = kh.clone();
        hs.push(("x-ms-range", "bytes=1048576-7340031"));
        let (status, len, got, clean) = get_until_error(&c, &pq, &hs).await;
        assert_eq!(status, 206, "{blob}");
        assert_eq!(len, Some(6 << 20), "{blob}");
        assert!(!clean);
        assert!(
            !got.is_empty() && got.len() < 6 << 20,
            "{blob}: {}",
            got.len()
        );
        assert!(got[..] == data[1 << 20..(1 << 20) + got.len()]);
    }
    // HEAD and other operations are not affected; without the fault the body is whole
    admin(&h, &c, "DELETE", "/__admin/faults", "").await;
    let (status, _, got, clean) = get_until_error(&c, "/ct1/one", &kh).await;
    assert_eq!((status, clean, got.len()), (200, true, N));
    assert!(got == data);
    h.shutdown().await;
}

#[tokio::test]
async fn ranges_conditions_and_listing() {
    let (h, c) = start_default().await;
    let r = c
        .send(
            "PUT",
            "/ct1/empty",
            &[("x-ms-blob-type", "BlockBlob")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.h("content-md5"), Some("1B2M2Y8AsgTpgAmY7PhCfg=="));
    let r = c
        .send("GET", "/ct1/empty", &[("x-ms-range", "bytes=0-")], vec![])
        .await;
    assert_eq!((r.status, r.code()), (416, "InvalidRange"));
    assert_eq!(r.h("content-range"), Some("bytes */0"));
    let r = c.send("GET", "/ct1/empty", &[], vec![]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = c
        .send(
            "PUT",
            "/ct1/hw",
            &[("x-ms-blob-type", "BlockBlob")],
            b"Hello World".to_vec(),
        )
        .await;
    assert_eq!(r.h("x-ms-content-crc64"), Some("YeJLfssylmU="));
    let etag = r.h("etag").unwrap().to_string();
    assert!(etag.starts_with("\"0x8D"));
    let r = c
        .send("GET", "/ct1/hw", &[("range", "bytes=6-")], vec![])
        .await;
    assert_eq!((r.status, r.text().as_str()), (206, "World"));
    let r = c
        .send("GET", "/ct1/hw", &[("x-ms-range", "bytes=11-20")], vec![])
        .await;
    assert_eq!(r.status, 416);
    let r = c
        .send(
            "GET",
            "/ct1/hw",
            &[
                ("x-ms-range", "bytes=0-4"),
                ("x-ms-range-get-content-crc64", "true"),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 206);
    assert!(r.h("x-ms-content-crc64").is_some());
    let r = c
        .send(
            "GET",
            "/ct1/hw",
            &[("if-none-match", etag.as_str())],
            vec![],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = c
        .send("GET", "/ct1/hw", &[("if-match", "\"0x8D000\"")], vec![])
        .await;
    assert_eq!((r.status, r.code()), (412, "ConditionNotMet"));
    let r = c
        .send(
            "PUT",
            "/ct1/hw",
            &[("x-ms-blob-type", "BlockBlob"), ("if-none-match", "*")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "BlobAlreadyExists"));
    let r = c
        .send(
            "PUT",
            "/ct1/hw",
            &[
                ("x-ms-blob-type", "BlockBlob"),
                ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
            ],
            b"x".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "Md5Mismatch"));
    let r = c
        .send(
            "PUT",
            "/ct1/hw?comp=metadata",
            &[("x-ms-meta-1bad", "x")],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "InvalidMetadata"));

    for n in ["d/a", "d/b/1", "d/b/2", "d/c", "e", "f/x"] {
        c.send(
            "PUT",
            &format!("/ct1/{n}"),
            &[("x-ms-blob-type", "BlockBlob")],
            vec![],
        )
        .await;
    }
    let mut marker = String::new();
    let mut seen = Vec::new();
    loop {
        let q = format!(
            "/ct1?restype=container&comp=list&delimiter=%2F&prefix=d%2F&maxresults=1{}",
            if marker.is_empty() {
                String::new()
            } else {
                format!("&marker={}", urlenc(&marker))
            }
        );
        let t = c.send("GET", &q, &[], vec![]).await.text();
        for part in t.split("<Name>").skip(1) {
            seen.push(part.split("</Name>").next().unwrap().to_string());
        }
        match t.split("<NextMarker>").nth(1) {
            Some(rest) => marker = rest.split("</NextMarker>").next().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(seen, vec!["d/a", "d/b/", "d/c"]);
    let r = c
        .send(
            "GET",
            "/ct1?restype=container&comp=list&maxresults=0",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400);
    h.shutdown().await;
}

#[tokio::test]
async fn persistence_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmulatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let h = emulator::start(cfg.clone()).await.unwrap();
    let c = Client::new(&h, DEV_KEY1);
    assert_eq!(
        c.send("PUT", "/ct1?restype=container", &[], vec![])
            .await
            .status,
        201
    );
    let k = cpk(&[9u8; 32]);
    let mut hs = cpk_headers(&k);
    hs.push(("x-ms-blob-type", "BlockBlob"));
    hs.push(("x-ms-meta-uid", "1000"));
    assert_eq!(
        c.send("PUT", "/ct1/a/b.txt", &hs, b"secret data".to_vec())
            .await
            .status,
        201
    );
    let id = B64.encode(b"0001");
    let r = c
        .send(
            "PUT",
            &format!("/ct1/staged?comp=block&blockid={}", urlenc(&id)),
            &[],
            b"pending".to_vec(),
        )
        .await;
    assert_eq!(r.status, 201);
    let staged_at = {
        let l = c
            .send(
                "GET",
                "/ct1?restype=container&comp=list&include=uncommittedblobs&prefix=staged",
                &[],
                vec![],
            )
            .await
            .text();
        let i = l.find("<Last-Modified>").expect("dated") + "<Last-Modified>".len();
        l[i..i + l[i..].find('<').unwrap()].to_string()
    };
    let etag = c
        .send("HEAD", "/ct1/a/b.txt", &cpk_headers(&k), vec![])
        .await
        .h("etag")
        .unwrap()
        .to_string();
    h.shutdown().await;

    let h = emulator::start(cfg).await.unwrap();
    let c = Client::new(&h, DEV_KEY1);
    let r = c
        .send("GET", "/ct1/a/b.txt", &cpk_headers(&k), vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "secret data");
    assert_eq!(r.h("etag"), Some(etag.as_str()));
    assert_eq!(r.h("x-ms-meta-uid"), Some("1000"));
    let r = c.send("GET", "/ct1/a/b.txt", &[], vec![]).await;
    assert_eq!(r.code(), "BlobUsesCustomerSpecifiedEncryption");
    // The uncommitted-only blob is listed only on request, dated by its last
    // Put Block (what `cpkfs doctor --clean` measures its grace period by),
    // and keeps that date across the restart.
    let listing = |q: &'static str| {
        let c = &c;
        async move {
            c.send(
                "GET",
                &format!("/ct1?restype=container&comp=list{q}"),
                &[],
                vec![],
            )
            .await
            .text()
        }
    };
    assert!(!listing("").await.contains("<Name>staged</Name>"));
    let with = listing("&include=uncommittedblobs").await;
    let entry = &with[with
        .find("<Name>staged</Name>")
        .expect("listed with uncommittedblobs")..];
    let entry = &entry[..entry.find("</Blob>").unwrap()];
    assert!(entry.contains("<Last-Modified>"), "{entry}");
    assert_eq!(
        entry.matches(staged_at.as_str()).count(),
        2,
        "Creation-Time and Last-Modified are the staging time: {entry}"
    );
    let xml = format!("<BlockList><Uncommitted>{id}</Uncommitted></BlockList>");
    let r = c
        .send("PUT", "/ct1/staged?comp=blocklist", &[], xml.into_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        c.send("GET", "/ct1/staged", &[], vec![]).await.text(),
        "pending"
    );
    // the stored bytes are not plaintext
    let mut found_plain = false;
    for f in std::fs::read_dir(dir.path().join("blocks")).unwrap() {
        let d = std::fs::read(f.unwrap().path()).unwrap();
        if d.windows(6).any(|w| w == b"secret") {
            found_plain = true;
        }
    }
    assert!(!found_plain);
    h.shutdown().await;
}

/// Rough throughput check (run: `cargo test --release --test emulator_wire -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_cpk_https() {
    use std::sync::Arc;
    // CPKFS_EMU_URL / CPKFS_EMU_CA: measure an external emulator process instead.
    let (h, c) = match std::env::var("CPKFS_EMU_URL") {
        Ok(url) => {
            let ca = std::env::var("CPKFS_EMU_CA")
                .ok()
                .map(|p| std::fs::read_to_string(p).unwrap());
            let c = Client::from_parts(&url, ca.as_deref(), DEV_KEY1, 8);
            c.send("PUT", "/ct1?restype=container", &[], vec![]).await;
            (None, c)
        }
        Err(_) => {
            let (h, _) = start_default().await;
            let c = Client::from_parts(&h.url, h.ca_pem.as_deref(), DEV_KEY1, 8);
            (Some(h), c)
        }
    };
    let c = Arc::new(c);
    let k = Arc::new(cpk(&[5u8; 32]));
    const BLOCK: usize = 8 << 20;
    const N: usize = 32;
    let data = Arc::new(vec![0x5au8; BLOCK]);
    let ids: Vec<String> = (0..N).map(|i| B64.encode(format!("{i:08}"))).collect();
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, k, data, ids) = (c.clone(), k.clone(), data.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            for id in ids.iter().skip(w).step_by(4) {
                let q = format!("/ct1/big?comp=block&blockid={}", urlenc(id));
                let r = c.send("PUT", &q, &cpk_headers(&k), data.to_vec()).await;
                assert_eq!(r.status, 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Put Block 8 MiB x{N}, concurrency 4, CPK, https: {:.2} GB/s",
        (BLOCK * N) as f64 / secs / 1e9
    );
    let xml: String = ids
        .iter()
        .map(|i| format!("<Latest>{i}</Latest>"))
        .collect();
    let r = c
        .send(
            "PUT",
            "/ct1/big?comp=blocklist",
            &cpk_headers(&k),
            format!("<BlockList>{xml}</BlockList>").into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201);
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, k) = (c.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(4) {
                let range = format!("bytes={}-{}", i * BLOCK, (i + 1) * BLOCK - 1);
                let mut hs = cpk_headers(&k);
                hs.push(("x-ms-range", range.as_str()));
                let r = c.send("GET", "/ct1/big", &hs, vec![]).await;
                assert_eq!((r.status, r.body.len()), (206, BLOCK));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ranged GET 8 MiB x{N}, concurrency 4, CPK, https: {:.2} GB/s",
        (BLOCK * N) as f64 / secs / 1e9
    );
    if let Some(h) = h {
        h.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------
// Put Blob From URL / Put Block From URL (§4.12, §3.8)
// ---------------------------------------------------------------------------------

const V_SOURCE_CPK: &str = "2026-02-06";

/// A blob service SAS (§2.8 layout), computed here independently of the emulator.
fn blob_sas(key: &[u8], account: &str, container: &str, blob: &str, sp: &str) -> String {
    let now = chrono::Utc::now();
    let st = (now - chrono::Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let se = (now + chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let sts = format!(
        "{sp}\n{st}\n{se}\n/blob/{account}/{container}/{blob}\n\n\nhttps\n{VERSION}\nb\n\n\n\n\n\n\n"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(sts.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    format!(
        "sp={sp}&st={}&se={}&spr=https&sv={VERSION}&sr=b&sig={}",
        urlenc(&st),
        urlenc(&se),
        urlenc(&sig)
    )
}

fn src_url(c: &Client, blob: &str, sas: Option<&str>) -> String {
    let u = format!("{}/{}/ct1/{blob}", c.base, c.account);
    match sas {
        Some(s) => format!("{u}?{s}"),
        None => u,
    }
}

fn source_cpk_headers(k: &Key) -> Vec<(&str, &str)> {
    vec![
        ("x-ms-source-encryption-key", k.key.as_str()),
        ("x-ms-source-encryption-key-sha256", k.sha.as_str()),
        ("x-ms-source-encryption-algorithm", "AES256"),
    ]
}

fn crc64_b64(data: &[u8]) -> String {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    B64.encode(d.sum64().to_le_bytes())
}

async fn get_with(c: &Client, path: &str, k: Option<&Key>) -> Resp {
    let hs = k.map(cpk_headers).unwrap_or_default();
    c.send("GET", path, &hs, vec![]).await
}

#[tokio::test]
async fn put_blob_from_url_rekeys_on_the_server() {
    let (h, c) = start_default().await;
    let (old, new, other) = (cpk(&[1u8; 32]), cpk(&[2u8; 32]), cpk(&[3u8; 32]));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut hs = cpk_headers(&old);
    hs.push(("x-ms-blob-type", "BlockBlob"));
    hs.push(("x-ms-blob-content-type", "text/x-test"));
    let r = c.send("PUT", "/ct1/src.bin", &hs, data.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let src_etag = r.h("etag").unwrap().to_string();
    let plain = b"no key here".to_vec();
    let r = c
        .send(
            "PUT",
            "/ct1/plain.bin",
            &[("x-ms-blob-type", "BlockBlob")],
            plain.clone(),
        )
        .await;
    assert_eq!(r.status, 201);
    let sas = blob_sas(&c.key, &c.account, "ct1", "src.bin", "r");
    let url = src_url(&c, "src.bin", Some(&sas));
    let (s, _) = admin(&h, &c, "DELETE", "/__admin/stats", "").await;
    assert_eq!(s, 204);

    // source key = old, destination key = new, at 2026-02-06
    let mut hs = vec![
        ("x-ms-version", V_SOURCE_CPK),
        ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-copy-source", url.as_str()),
        ("x-ms-meta-mode", "0600"),
        ("x-ms-source-if-match", src_etag.as_str()),
    ];
    hs.extend(source_cpk_headers(&old));
    hs.extend(cpk_headers(&new));
    let r = c.send("PUT", "/ct1/dst.bin", &hs, vec![]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.h("x-ms-encryption-key-sha256"), Some(new.sha.as_str()));
    assert_eq!(r.h("x-ms-request-server-encrypted"), Some("true"));
    assert_eq!(r.h("x-ms-content-crc64"), Some(crc64_b64(&data).as_str()));
    assert_eq!(r.h("x-ms-version"), Some(V_SOURCE_CPK));
    // No data went over the wire.
    let (_, stats) = admin(&h, &c, "GET", "/__admin/stats", "").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["bytes_in"], 0, "{stats}");
    assert_eq!(stats["requests"]["PutBlobFromUrl"], 1, "{stats}");

    let g = get_with(&c, "/ct1/dst.bin", Some(&new)).await;
    assert_eq!(g.status, 200);
    assert!(g.body == data, "re-keyed content differs");
    assert_eq!(g.h("x-ms-meta-mode"), Some("0600"));
    assert_eq!(
        g.h("content-type"),
        Some("text/x-test"),
        "source properties copied"
    );
    assert_eq!(g.h("x-ms-encryption-key-sha256"), Some(new.sha.as_str()));
    let g = get_with(&c, "/ct1/dst.bin", Some(&old)).await;
    assert_eq!(g.code(), "BlobCustomerSpecifiedEncryptionMismatch");
    // the source is unchanged
    let g = get_with(&c, "/ct1/src.bin", Some(&old)).await;
    assert!(g.status == 200 && g.body == data);

    // same key on both sides (a rename): content shared, still readable
    let mut hs = vec![
        ("x-ms-version", V_SOURCE_CPK),
        ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-copy-source", url.as_str()),
    ];
    hs.extend(source_cpk_headers(&old));
    hs.extend(cpk_headers(&old));
    let r = c.send("PUT", "/ct1/renamed.bin", &hs, vec![]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let g = get_with(&c, "/ct1/renamed.bin", Some(&old)).await;
    assert!(g.status == 200 && g.body == data);

    // every CPK rule for the source: the 409 codes of a GET, marked as the source's
    let put = |src: String, extra: Vec<(&'static str, String)>| {
        let c = &c;
        let new = &new;
        async move {
            let mut hs: Vec<(&str, &str)> = vec![
                ("x-ms-version", V_SOURCE_CPK),
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-copy-source", src.as_str()),
            ];
            for (k, v) in &extra {
                hs.push((k, v.as_str()));
            }
            hs.extend(cpk_headers(new));
            c.send("PUT", "/ct1/dst2.bin", &hs, vec![]).await
        }
    };
    let src_hdrs = |k: &Key| -> Vec<(&'static str, String)> {
        vec![
            ("x-ms-source-encryption-key", k.key.clone()),
            ("x-ms-source-encryption-key-sha256", k.sha.clone()),
            ("x-ms-source-encryption-algorithm", "AES256".into()),
        ]
    };
    let r = put(url.clone(), vec![]).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    assert_eq!(r.h("x-ms-copy-source-status-code"), Some("409"));
    assert_eq!(
        r.h("x-ms-copy-source-error-code"),
        Some("BlobUsesCustomerSpecifiedEncryption")
    );
    let r = put(url.clone(), src_hdrs(&other)).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobCustomerSpecifiedEncryptionMismatch")
    );
    let plain_sas = blob_sas(&c.key, &c.account, "ct1", "plain.bin", "r");
    let plain_url = src_url(&c, "plain.bin", Some(&plain_sas));
    let r = put(plain_url.clone(), src_hdrs(&old)).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobDoesNotUseCustomerSpecifiedEncryption")
    );
    // a non-CPK source needs no source key; the destination gets the key
    let r = put(plain_url.clone(), vec![]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let g = get_with(&c, "/ct1/dst2.bin", Some(&new)).await;
    assert!(g.status == 200 && g.body == plain);
    // malformed source key headers name the source header
    let mut bad = src_hdrs(&old);
    bad[1].1 = other.sha.clone();
    let r = put(url.clone(), bad).await;
    assert_eq!((r.status, r.code()), (400, "InvalidHeaderValue"));
    assert!(
        r.text()
            .contains("<HeaderName>x-ms-source-encryption-key-sha256</HeaderName>"),
        "{}",
        r.text()
    );
    let mut partial = src_hdrs(&old);
    partial.pop();
    let r = put(url.clone(), partial).await;
    assert_eq!((r.status, r.code()), (400, "MissingRequiredHeader"));
    assert!(r
        .text()
        .contains("<HeaderName>x-ms-source-encryption-algorithm</HeaderName>"));

    // source conditions
    let r = put(
        url.clone(),
        [
            src_hdrs(&old),
            vec![("x-ms-source-if-match", "\"0x8D0000000000000\"".into())],
        ]
        .concat(),
    )
    .await;
    assert_eq!((r.status, r.code()), (412, "SourceConditionNotMet"));
    let r = put(
        url.clone(),
        [
            src_hdrs(&old),
            vec![("x-ms-source-if-none-match", src_etag.clone())],
        ]
        .concat(),
    )
    .await;
    assert_eq!((r.status, r.code()), (412, "SourceConditionNotMet"));

    // source authorization: its own SAS, for that blob, with read permission
    let r = put(src_url(&c, "src.bin", None), src_hdrs(&old)).await;
    assert_eq!((r.status, r.code()), (401, "CannotVerifyCopySource"));
    assert_eq!(
        r.h("x-ms-copy-source-error-code"),
        Some("NoAuthenticationInformation")
    );
    let r = put(src_url(&c, "src.bin", Some(&plain_sas)), src_hdrs(&old)).await;
    assert_eq!((r.status, r.code()), (403, "CannotVerifyCopySource"));
    let wsas = blob_sas(&c.key, &c.account, "ct1", "src.bin", "w");
    let r = put(src_url(&c, "src.bin", Some(&wsas)), src_hdrs(&old)).await;
    assert_eq!((r.status, r.code()), (403, "CannotVerifyCopySource"));
    assert_eq!(
        r.h("x-ms-copy-source-error-code"),
        Some("AuthorizationPermissionMismatch")
    );
    let nsas = blob_sas(&c.key, &c.account, "ct1", "nope.bin", "r");
    let r = put(src_url(&c, "nope.bin", Some(&nsas)), vec![]).await;
    assert_eq!((r.status, r.code()), (404, "CannotVerifyCopySource"));
    assert_eq!(r.h("x-ms-copy-source-error-code"), Some("BlobNotFound"));
    // destination conditions still apply
    let r = put(
        url.clone(),
        [src_hdrs(&old), vec![("if-none-match", "*".into())]].concat(),
    )
    .await;
    assert_eq!((r.status, r.code()), (409, "BlobAlreadyExists"));

    // Before 2026-02-06 the source headers are not part of the protocol: a CPK source
    // fails like Copy Blob.
    let mut hs = vec![
        ("x-ms-blob-type", "BlockBlob"),
        ("x-ms-copy-source", url.as_str()),
    ];
    hs.extend(source_cpk_headers(&old));
    hs.extend(cpk_headers(&new));
    let r = c.send("PUT", "/ct1/dst3.bin", &hs, vec![]).await;
    assert_eq!((r.status, r.code()), (409, "CannotVerifyCopySource"));
    assert_eq!(
        r.h("x-ms-copy-source-error-code"),
        Some("BlobUsesCustomerSpecifiedEncryption")
    );
    assert!(r
        .text()
        .contains("encrypted with customer specified encryption"));
    h.shutdown().await;
}

#[tokio::test]
async fn put_block_from_url_ranges_keys_and_limits() {
    let (h, c) = start_default().await;
    let (old, new) = (cpk(&[4u8; 32]), cpk(&[5u8; 32]));
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 241) as u8).collect();
    let mut hs = cpk_headers(&old);
    hs.push(("x-ms-blob-type", "BlockBlob"));
    assert_eq!(
        c.send("PUT", "/ct1/s.bin", &hs, data.clone()).await.status,
        201
    );
    let sas = blob_sas(&c.key, &c.account, "ct1", "s.bin", "r");
    let url = src_url(&c, "s.bin", Some(&sas));
    let ids = [B64.encode("blk-0000"), B64.encode("blk-0001")];
    let ranges = ["bytes=0-1048575", "bytes=1048576-"];
    for (id, range) in ids.iter().zip(ranges) {
        let mut hs = vec![
            ("x-ms-version", V_SOURCE_CPK),
            ("x-ms-copy-source", url.as_str()),
            ("x-ms-source-range", range),
        ];
        hs.extend(source_cpk_headers(&old));
        hs.extend(cpk_headers(&new));
        let r = c
            .send(
                "PUT",
                &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(id)),
                &hs,
                vec![],
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.h("x-ms-encryption-key-sha256"), Some(new.sha.as_str()));
    }
    let first = &data[..1 << 20];
    let mut hs = vec![
        ("x-ms-version", V_SOURCE_CPK),
        ("x-ms-copy-source", url.as_str()),
        ("x-ms-source-range", "bytes=0-1048575"),
        ("x-ms-source-content-crc64", "AAAAAAAAAAA="),
    ];
    hs.extend(source_cpk_headers(&old));
    hs.extend(cpk_headers(&new));
    let bid = B64.encode("blk-0002");
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs,
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "Crc64Mismatch"));
    let good = crc64_b64(first);
    hs[3].1 = good.as_str();
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs,
            vec![],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.h("x-ms-content-crc64"), Some(good.as_str()));

    // destination key rules of Put Block: blocks staged with `new` refuse another key
    let mut hs = vec![
        ("x-ms-version", V_SOURCE_CPK),
        ("x-ms-copy-source", url.as_str()),
        ("x-ms-source-range", "bytes=0-9"),
    ];
    hs.extend(source_cpk_headers(&old));
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs,
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );
    hs.extend(cpk_headers(&old));
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs,
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobCustomerSpecifiedEncryptionMismatch")
    );
    // a range past the end of the source
    let mut hs = vec![
        ("x-ms-version", V_SOURCE_CPK),
        ("x-ms-copy-source", url.as_str()),
        ("x-ms-source-range", "bytes=2500000-2600000"),
    ];
    hs.extend(source_cpk_headers(&old));
    hs.extend(cpk_headers(&new));
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs,
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (416, "InvalidRange"));
    // without the source key
    let hs2: Vec<_> = hs
        .iter()
        .filter(|(k, _)| !k.starts_with("x-ms-source-encryption"))
        .cloned()
        .collect();
    let r = c
        .send(
            "PUT",
            &format!("/ct1/d.bin?comp=block&blockid={}", urlenc(&bid)),
            &hs2,
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (409, "BlobUsesCustomerSpecifiedEncryption")
    );

    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{}</Latest><Latest>{}</Latest></BlockList>",
        ids[0], ids[1]
    );
    let r = c
        .send(
            "PUT",
            "/ct1/d.bin?comp=blocklist",
            &cpk_headers(&new),
            body.into_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let g = get_with(&c, "/ct1/d.bin", Some(&new)).await;
    assert!(
        g.status == 200 && g.body == data,
        "staged from URL != source"
    );

    // Limits: a 5,001 MiB source (one 1 MiB block committed 5,001 times).
    let mib = vec![7u8; 1 << 20];
    let bid = B64.encode("big-0000");
    let r = c
        .send(
            "PUT",
            &format!("/ct1/big.bin?comp=block&blockid={}", urlenc(&bid)),
            &[],
            mib,
        )
        .await;
    assert_eq!(r.status, 201);
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for _ in 0..5001 {
        body.push_str(&format!("<Latest>{bid}</Latest>"));
    }
    body.push_str("</BlockList>");
    let r = c
        .send("PUT", "/ct1/big.bin?comp=blocklist", &[], body.into_bytes())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let bsas = blob_sas(&c.key, &c.account, "ct1", "big.bin", "r");
    let burl = src_url(&c, "big.bin", Some(&bsas));
    let r = c
        .send(
            "PUT",
            "/ct1/big-copy.bin",
            &[
                ("x-ms-version", V_SOURCE_CPK),
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-copy-source", burl.as_str()),
            ],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (413, "RequestBodyTooLarge"));
    let over = format!("bytes=0-{}", 4000u64 << 20);
    let r = c
        .send(
            "PUT",
            &format!("/ct1/big-copy.bin?comp=block&blockid={}", urlenc(&bid)),
            &[
                ("x-ms-version", V_SOURCE_CPK),
                ("x-ms-copy-source", burl.as_str()),
                ("x-ms-source-range", over.as_str()),
            ],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (413, "RequestBodyTooLarge"));
    let r = c
        .send(
            "PUT",
            &format!("/ct1/big-copy.bin?comp=block&blockid={}", urlenc(&bid)),
            &[
                ("x-ms-version", V_SOURCE_CPK),
                ("x-ms-copy-source", burl.as_str()),
                ("x-ms-source-range", "bytes=5242880000-5243928575"),
            ],
            vec![],
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "the last MiB of a 5,001 MiB source: {}",
        r.text()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn source_cpk_switched_off_answers_like_an_older_service() {
    let h = emulator::start(EmulatorConfig {
        source_cpk: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let c = Client::new(&h, DEV_KEY1);
    assert_eq!(
        c.send("PUT", "/ct1?restype=container", &[], vec![])
            .await
            .status,
        201
    );
    let data = b"plain source".to_vec();
    let r = c
        .send(
            "PUT",
            "/ct1/p.bin",
            &[("x-ms-blob-type", "BlockBlob")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 201);
    let sas = blob_sas(&c.key, &c.account, "ct1", "p.bin", "r");
    let url = src_url(&c, "p.bin", Some(&sas));
    let r = c
        .send(
            "PUT",
            "/ct1/q.bin",
            &[
                ("x-ms-version", V_SOURCE_CPK),
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-copy-source", url.as_str()),
            ],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "InvalidHeaderValue"));
    assert!(r.text().contains("<HeaderName>x-ms-version</HeaderName>"));
    // the From-URL operations themselves still work at older versions
    let r = c
        .send(
            "PUT",
            "/ct1/q.bin",
            &[
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-copy-source", url.as_str()),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get_with(&c, "/ct1/q.bin", None).await.body, data);
    h.shutdown().await;
}

#[tokio::test]
async fn copy_source_bearer_authorization() {
    let h = emulator::start(EmulatorConfig {
        vault_identities: vec![
            emulator::token::parse_identity_flag("reader:pw:blob/read").unwrap(),
            emulator::token::parse_identity_flag("nobody:pw:secrets/get").unwrap(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = Client::new(&h, DEV_KEY1);
    assert_eq!(
        c.send("PUT", "/ct1?restype=container", &[], vec![])
            .await
            .status,
        201
    );
    let r = c
        .send(
            "PUT",
            "/ct1/p.bin",
            &[("x-ms-blob-type", "BlockBlob")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, 201);
    let token = |id: &'static str| {
        let c = &c;
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            c.base,
            emulator::token::DEFAULT_TENANT
        );
        async move {
            let r = c
                .http
                .post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", id),
                    ("client_secret", "pw"),
                    ("scope", "https://vault.azure.net/.default"),
                ])
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            format!("Bearer {}", v["access_token"].as_str().unwrap())
        }
    };
    let url = src_url(&c, "p.bin", None);
    for (who, want) in [("reader", 201), ("nobody", 403)] {
        let t = token(who).await;
        let r = c
            .send(
                "PUT",
                "/ct1/q.bin",
                &[
                    ("x-ms-blob-type", "BlockBlob"),
                    ("x-ms-copy-source", url.as_str()),
                    ("x-ms-copy-source-authorization", t.as_str()),
                ],
                vec![],
            )
            .await;
        assert_eq!(r.status, want, "{who}: {}", r.text());
    }
    h.shutdown().await;
}
