//! Shared Key and SAS verification, written from the protocol reference (§2).
//!
//! Deliberately independent of the REST client's signer in `cpkfs-blob`.

use std::cmp::Ordering;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method};
use sha2::Sha256;
use std::time::Duration;

use super::error::ApiError;
use super::shared::Shared;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Level-1 (primary) weights of the service's header-name collation (§2.3).
fn w1(c: u8) -> u32 {
    match c {
        b'!' => 0x71c,
        b'#' => 0x71f,
        b'$' => 0x721,
        b'%' => 0x723,
        b'&' => 0x725,
        b'*' => 0x72d,
        b'+' => 0x803,
        b'.' => 0x733,
        b'0' => 0xd03,
        b'1' => 0xd1a,
        b'2' => 0xd1c,
        b'3' => 0xd1e,
        b'4' => 0xd20,
        b'5' => 0xd22,
        b'6' => 0xd24,
        b'7' => 0xd26,
        b'8' => 0xd28,
        b'9' => 0xd2a,
        b'^' => 0x743,
        b'_' => 0x744,
        b'`' => 0x748,
        b'|' => 0x74c,
        b'~' => 0x750,
        b'a'..=b'z' | b'A'..=b'Z' => {
            const LETTERS: [u32; 26] = [
                0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48,
                0xe51, 0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6,
                0xea7, 0xea9,
            ];
            LETTERS[(c.to_ascii_lowercase() - b'a') as usize]
        }
        _ => 0,
    }
}

/// Level-2 (secondary) weights.
fn w2(c: u8) -> u32 {
    match c {
        b'\'' => 0x8012,
        b'-' => 0x8212,
        _ => 0,
    }
}

/// The service's comparison of canonicalized header names (a literal port of the
/// two-level weight comparator in §2.3).
pub fn header_cmp(a: &str, b: &str) -> Ordering {
    let a = a.as_bytes();
    let b = b.as_bytes();
    let mut level = 0usize;
    let (mut i, mut j) = (0usize, 0usize);
    while level < 2 {
        if level == 1 && i != j {
            return if i > j {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let table = if level == 0 { w1 } else { w2 };
        let wa = if i < a.len() { table(a[i]) } else { 1 };
        let wb = if j < b.len() { table(b[j]) } else { 1 };
        if wa == 1 && wb == 1 {
            level += 1;
            i = 0;
            j = 0;
        } else if wa == wb {
            i += 1;
            j += 1;
        } else if wa == 0 {
            i += 1;
        } else if wb == 0 {
            j += 1;
        } else {
            return if wa < wb {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
    }
    Ordering::Equal
}

/// Joined value of a (possibly repeated) header, or "" if absent.
fn header_value(headers: &HeaderMap, name: &str) -> String {
    let mut out = String::new();
    for (n, v) in headers.get_all(name).iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    out
}

/// Trim and collapse runs of linear whitespace outside quoted strings.
fn canonical_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut in_quotes = false;
    let mut pending_space = false;
    for ch in v.trim().chars() {
        if ch == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(ch);
    }
    out
}

/// CanonicalizedHeaders (§2.3), service sort order.
pub fn canonicalized_headers(headers: &HeaderMap) -> String {
    let mut names: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-ms-"))
        .collect();
    names.sort_by(|a, b| header_cmp(a, b));
    names.dedup();
    let mut out = String::new();
    for n in names {
        out.push_str(n);
        out.push(':');
        out.push_str(&canonical_value(&header_value(headers, n)));
        out.push('\n');
    }
    out
}

/// CanonicalizedResource (§2.4): `/account` + encoded path + sorted decoded query lines.
pub fn canonicalized_resource(account: &str, raw_path: &str, query: &[(String, String)]) -> String {
    let mut out = format!("/{account}{raw_path}");
    let mut params: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (k, v) in query {
        params.entry(k.to_ascii_lowercase()).or_default().push(v);
    }
    for (k, mut vs) in params {
        vs.sort();
        out.push('\n');
        out.push_str(&k);
        out.push(':');
        out.push_str(&vs.join(","));
    }
    out
}

/// The Shared Key string-to-sign of the Blob service (§2.2).
pub fn string_to_sign(
    method: &str,
    headers: &HeaderMap,
    account: &str,
    raw_path: &str,
    query: &[(String, String)],
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(&method.to_ascii_uppercase());
    s.push('\n');
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
        let v = header_value(headers, h);
        if !(h == "content-length" && v == "0") {
            s.push_str(&v);
        }
        s.push('\n');
    }
    s.push_str(&canonicalized_headers(headers));
    s.push_str(&canonicalized_resource(account, raw_path, query));
    s
}

pub fn hmac_b64(key: &[u8], data: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(data.as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// Constant-time check of a base64 signature against any of the keys.
pub fn signature_matches(keys: &[Vec<u8>], sts: &str, given: &str) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for k in keys {
        let expect = hmac_b64(k, sts);
        ok |= expect.as_bytes().ct_eq(given.as_bytes());
    }
    ok.into()
}

/// Parsed `Authorization: SharedKey account:signature`.
pub fn parse_shared_key(value: &str) -> Option<(String, String)> {
    let rest = value.strip_prefix("SharedKey ")?;
    let (acct, sig) = rest.split_once(':')?;
    if acct.is_empty() || sig.is_empty() {
        return None;
    }
    Some((acct.to_string(), sig.to_string()))
}

/// Fields of a SAS token taken from the (decoded) query.
#[derive(Debug, Default, Clone)]
pub struct Sas {
    pub sv: String,
    pub ss: Option<String>,
    pub srt: Option<String>,
    pub sr: Option<String>,
    pub sp: String,
    pub st: String,
    pub se: String,
    pub sip: String,
    pub spr: String,
    pub si: String,
    pub ses: String,
    pub snapshot: String,
    pub rscc: String,
    pub rscd: String,
    pub rsce: String,
    pub rscl: String,
    pub rsct: String,
    pub sig: String,
}

impl Sas {
    pub fn from_query(query: &[(String, String)]) -> Option<Sas> {
        let get = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let sig = get("sig")?;
        Some(Sas {
            sv: get("sv").unwrap_or_default(),
            ss: get("ss"),
            srt: get("srt"),
            sr: get("sr"),
            sp: get("sp").unwrap_or_default(),
            st: get("st").unwrap_or_default(),
            se: get("se").unwrap_or_default(),
            sip: get("sip").unwrap_or_default(),
            spr: get("spr").unwrap_or_default(),
            si: get("si").unwrap_or_default(),
            ses: get("ses").unwrap_or_default(),
            snapshot: get("snapshot").unwrap_or_default(),
            rscc: get("rscc").unwrap_or_default(),
            rscd: get("rscd").unwrap_or_default(),
            rsce: get("rsce").unwrap_or_default(),
            rscl: get("rscl").unwrap_or_default(),
            rsct: get("rsct").unwrap_or_default(),
            sig,
        })
    }

    pub fn is_account(&self) -> bool {
        self.ss.is_some()
    }

    /// Account SAS string-to-sign (§2.8).
    pub fn account_sts(&self, account: &str) -> String {
        let mut s = format!(
            "{account}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.sp,
            self.ss.as_deref().unwrap_or(""),
            self.srt.as_deref().unwrap_or(""),
            self.st,
            self.se,
            self.sip,
            self.spr,
            self.sv
        );
        if self.sv.as_str() >= "2020-12-06" {
            s.push_str(&self.ses);
            s.push('\n');
        }
        s
    }

    /// Blob/container service SAS string-to-sign (§2.8). `resource` is
    /// `/blob/{account}/{container}[/{blob}]`, not URL-encoded.
    pub fn service_sts(&self, resource: &str) -> String {
        let mut parts: Vec<&str> = vec![
            &self.sp,
            &self.st,
            &self.se,
            resource,
            &self.si,
            &self.sip,
            &self.spr,
            &self.sv,
            self.sr.as_deref().unwrap_or(""),
            &self.snapshot,
        ];
        if self.sv.as_str() >= "2020-12-06" {
            parts.push(&self.ses);
        }
        parts.extend([
            self.rscc.as_str(),
            &self.rscd,
            &self.rsce,
            &self.rscl,
            &self.rsct,
        ]);
        parts.join("\n")
    }
}

/// Parse an ISO 8601 SAS time (`2024-03-01T00:00:00Z`, also date-only).
pub fn parse_sas_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Verify Shared Key or SAS. Returns the SAS `sv` for SAS requests. Also checks the
/// SAS of a copy source (`ops/from_url.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn authenticate(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    query: &[(String, String)],
    raw_path: &str,
    account: &str,
    container: &str,
    blob: &str,
    op: &str,
) -> Result<Option<String>, ApiError> {
    let keys: Option<Vec<Vec<u8>>> = {
        let st = shared.state.lock().unwrap();
        st.accounts.get(account).map(|a| a.keys.to_vec())
    };
    if let Some(authz) = headers.get("authorization") {
        let authz = authz.to_str().unwrap_or("");
        check_shared_key(keys, authz, method, headers, query, raw_path, account)?;
        return Ok(None);
    }
    let Some(sas) = Sas::from_query(query) else {
        return Err(ApiError::no_auth());
    };
    let Some(keys) = keys else {
        return Err(ApiError::auth_failed(Some(
            "The specified account does not exist.".into(),
        )));
    };
    check_sas_signature(&sas, &keys, account, container, blob)?;
    check_sas_times(&sas)?;
    if sas.spr == "https" && !shared.tls {
        return Err(ApiError::new(
            403,
            "AuthorizationProtocolMismatch",
            "This request is not authorized to perform this operation using this protocol.",
        ));
    }
    check_sas_scope(&sas, container, blob)?;
    check_sas_permission(&sas, op)?;
    Ok(Some(sas.sv.clone()))
}

/// Shared Key: the account named in the header, a date within 15 minutes,
/// and an HMAC of the string-to-sign under either account key (§2.1–2.4).
fn check_shared_key(
    keys: Option<Vec<Vec<u8>>>,
    authz: &str,
    method: &Method,
    headers: &HeaderMap,
    query: &[(String, String)],
    raw_path: &str,
    account: &str,
) -> Result<(), ApiError> {
    let Some((acct, sig)) = parse_shared_key(authz) else {
        return Err(ApiError::auth_failed(Some(format!(
            "The authorization header '{authz}' is not supported or malformed."
        ))));
    };
    let Some(keys) = keys.filter(|_| acct == account) else {
        return Err(ApiError::auth_failed(Some(format!(
            "The account '{acct}' does not exist or does not match the request URI."
        ))));
    };
    let date = headers
        .get("x-ms-date")
        .or_else(|| headers.get("date"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Ok(t) = httpdate::parse_http_date(date) else {
        return Err(ApiError::auth_failed(Some(
            "Request date header not specified or invalid.".to_string(),
        )));
    };
    let now = std::time::SystemTime::now();
    if let Ok(age) = now.duration_since(t) {
        if age > Duration::from_secs(15 * 60) {
            return Err(ApiError::auth_failed(Some(format!(
                "Request date header too old: '{date}'"
            ))));
        }
    } else if t.duration_since(now).unwrap_or_default() > Duration::from_secs(15 * 60) {
        return Err(ApiError::auth_failed(Some(format!(
            "Request date header too far in the future: '{date}'"
        ))));
    }
    let sts = string_to_sign(method.as_str(), headers, account, raw_path, query);
    if !signature_matches(&keys, &sts, &sig) {
        return Err(ApiError::auth_failed(Some(format!(
            "The MAC signature found in the HTTP request '{sig}' is not the same as any computed signature. Server used following string to sign: '{sts}'."
        ))));
    }
    Ok(())
}

/// A SAS's signature under either account key, over the account or service
/// string-to-sign of the resource it names.
fn check_sas_signature(
    sas: &Sas,
    keys: &[Vec<u8>],
    account: &str,
    container: &str,
    blob: &str,
) -> Result<(), ApiError> {
    let sts = if sas.is_account() {
        sas.account_sts(account)
    } else {
        let mut res = format!("/blob/{account}/{container}");
        if sas.sr.as_deref() != Some("c") && !blob.is_empty() {
            res.push('/');
            res.push_str(blob);
        }
        sas.service_sts(&res)
    };
    if !signature_matches(keys, &sts, &sas.sig) {
        return Err(ApiError::auth_failed(Some(format!(
            "Signature did not match. String to sign used was {sts}"
        ))));
    }
    Ok(())
}

/// Not expired, and not starting more than 15 minutes from now.
fn check_sas_times(sas: &Sas) -> Result<(), ApiError> {
    let now = chrono::Utc::now();
    let se = parse_sas_time(&sas.se)
        .ok_or_else(|| ApiError::auth_failed(Some("Signed expiry time is invalid.".into())))?;
    if now > se {
        return Err(ApiError::auth_failed(Some(format!(
            "Signed expiry time [{}] has to be after signed start time and current time.",
            sas.se
        ))));
    }
    if !sas.st.is_empty() {
        let st = parse_sas_time(&sas.st)
            .ok_or_else(|| ApiError::auth_failed(Some("Signed start time is invalid.".into())))?;
        if now + chrono::Duration::minutes(15) < st {
            return Err(ApiError::auth_failed(Some(format!(
                "Signed start time [{}] is in the future.",
                sas.st
            ))));
        }
    }
    Ok(())
}

/// The SAS covers the blob service and the kind of resource asked for.
fn check_sas_scope(sas: &Sas, container: &str, blob: &str) -> Result<(), ApiError> {
    let wrong_type = || {
        ApiError::new(
            403,
            "AuthorizationResourceTypeMismatch",
            "This request is not authorized to perform this operation using this resource type.",
        )
    };
    if sas.is_account() {
        if !sas.ss.as_deref().unwrap_or("").contains('b') {
            return Err(ApiError::new(
                403,
                "AuthorizationServiceMismatch",
                "This request is not authorized to perform this operation using this service.",
            ));
        }
        let need = if container.is_empty() {
            's'
        } else if blob.is_empty() {
            'c'
        } else {
            'o'
        };
        if !sas.srt.as_deref().unwrap_or("").contains(need) {
            return Err(wrong_type());
        }
    } else if sas.sr.as_deref() == Some("b") && blob.is_empty() {
        return Err(wrong_type());
    }
    Ok(())
}

/// The SAS grants a permission the operation needs.
fn check_sas_permission(sas: &Sas, op: &str) -> Result<(), ApiError> {
    let allowed: &[char] = match op {
        "GetBlob"
        | "GetBlobProperties"
        | "GetBlockList"
        | "GetContainerProperties"
        | "GetBlobMetadata"
        | "GetContainerMetadata" => &['r'],
        "PutBlob" | "PutBlock" | "PutBlockList" | "CopyBlob" | "PutBlobFromUrl"
        | "PutBlockFromUrl" => &['w', 'c'],
        "SetBlobMetadata" | "SetBlobProperties" | "SetContainerMetadata" => &['w'],
        "CreateContainer" => &['c', 'w'],
        "DeleteBlob" | "DeleteContainer" => &['d'],
        "ListBlobs" | "ListContainers" => &['l'],
        _ => &[],
    };
    if !allowed.iter().any(|c| sas.sp.contains(*c)) {
        return Err(ApiError::new(
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_query;
    use http::HeaderValue;

    const KEY: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    const DATE: &str = "Fri, 01 Mar 2024 12:00:00 GMT";

    fn key() -> Vec<u8> {
        B64.decode(KEY).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn split(url_path_query: &str) -> (String, Vec<(String, String)>) {
        match url_path_query.split_once('?') {
            Some((p, q)) => (p.to_string(), parse_query(q)),
            None => (url_path_query.to_string(), vec![]),
        }
    }

    #[test]
    fn header_sort_matches_reference_vector() {
        let expected = [
            "x-ms-blob-type",
            "x-ms-client-request-id",
            "x-ms-date",
            "x-ms-meta-test",
            "x-ms-meta-test-",
            "x-ms-meta-test--",
            "x-ms-meta-test_-",
            "x-ms-meta-test-_",
            "x-ms-meta-test__",
            "x-ms-meta-test_a",
            "x-ms-meta-test_a-",
            "x-ms-meta-test-_a",
            "x-ms-meta-test_a_",
            "x-ms-meta-test_a-_",
            "x-ms-meta-test_z",
            "x-ms-meta-test-a",
            "x-ms-version",
        ];
        let mut v: Vec<&str> = expected.iter().rev().copied().collect();
        v.sort_by(|a, b| header_cmp(a, b));
        assert_eq!(v, expected);
        // also from a shuffled order
        let mut v: Vec<&str> = expected.to_vec();
        v.swap(0, 16);
        v.swap(3, 12);
        v.swap(5, 9);
        v.sort_by(|a, b| header_cmp(a, b));
        assert_eq!(v, expected);
        // every pair is consistent
        for (i, a) in expected.iter().enumerate() {
            for (j, b) in expected.iter().enumerate() {
                assert_eq!(header_cmp(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(header_cmp("x-ms-meta-i_", "x-ms-meta-i0"), Ordering::Less);
    }

    #[test]
    fn vector_a_list_blobs_host_style() {
        let (p, q) = split("/mycontainer?restype=container&comp=list&prefix=a%2F&delimiter=%2F");
        let h = headers(&[("x-ms-date", DATE), ("x-ms-version", "2021-08-06")]);
        let sts = string_to_sign("GET", &h, "myaccount", &p, &q);
        assert_eq!(sts, "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-version:2021-08-06\n/myaccount/mycontainer\ncomp:list\ndelimiter:/\nprefix:a/\nrestype:container");
        assert!(signature_matches(
            &[key()],
            &sts,
            "iWNmpMgo+P7KqLXHZu+vyRpnwivDzLIFVvCTxUaG+W4="
        ));
    }

    #[test]
    fn vector_b_path_style() {
        let dev = B64.decode(crate::DEV_KEY1).unwrap();
        let (p, q) = split(
            "/devstoreaccount1/mycontainer?restype=container&comp=list&prefix=a%2F&delimiter=%2F",
        );
        let h = headers(&[("x-ms-date", DATE), ("x-ms-version", "2021-08-06")]);
        let sts = string_to_sign("GET", &h, "devstoreaccount1", &p, &q);
        assert!(sts.contains("\n/devstoreaccount1/devstoreaccount1/mycontainer\n"));
        // key2 listed first: either key must verify
        assert!(signature_matches(
            &[key(), dev],
            &sts,
            "MSAIU4HVKCFx6nl7w7fhYZ8KVA3HvPWIUl0rxTD+T7k="
        ));
    }

    #[test]
    fn vector_c_put_block_cpk() {
        let (p, q) = split("/mycontainer/dir/file.txt?comp=block&blockid=YmxrLTAwMDE%3D");
        let h = headers(&[
            ("content-length", "11"),
            ("content-md5", "sQqNsWTgdUEFt6mb5y4/5Q=="),
            ("x-ms-date", DATE),
            ("x-ms-version", "2021-08-06"),
            (
                "x-ms-encryption-key",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            (
                "x-ms-encryption-key-sha256",
                "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=",
            ),
            ("x-ms-encryption-algorithm", "AES256"),
            ("x-ms-lease-id", "f8b6f0b0-2d1a-4c59-8d37-3b2b1d6f5a01"),
        ]);
        let sts = string_to_sign("PUT", &h, "myaccount", &p, &q);
        assert!(
            sts.ends_with("/myaccount/mycontainer/dir/file.txt\nblockid:YmxrLTAwMDE=\ncomp:block")
        );
        assert!(signature_matches(
            &[key()],
            &sts,
            "Pc+SKHfiAETpaZMTORVXEy0FmFGcbng2NFURbH/nBoM="
        ));
    }

    #[test]
    fn vector_d_put_blob_empty() {
        let h = headers(&[
            ("content-length", "0"),
            ("content-type", "application/octet-stream"),
            ("if-none-match", "*"),
            ("x-ms-blob-type", "BlockBlob"),
            ("x-ms-date", DATE),
            ("x-ms-version", "2021-08-06"),
            ("x-ms-meta-mode", "0644"),
            ("x-ms-meta-uid", "1000"),
        ]);
        let sts = string_to_sign("PUT", &h, "myaccount", "/mycontainer/empty.bin", &[]);
        assert_eq!(sts, "PUT\n\n\n\n\napplication/octet-stream\n\n\n\n*\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-meta-mode:0644\nx-ms-meta-uid:1000\nx-ms-version:2021-08-06\n/myaccount/mycontainer/empty.bin");
        assert!(signature_matches(
            &[key()],
            &sts,
            "dHgAzYFYWQxbmDLW2rHrc/Cs/uYk45pPkhyKevcPdYs="
        ));
    }

    #[test]
    fn vector_e_service_order() {
        let (p, q) = split("/mycontainer/f?comp=metadata");
        let h = headers(&[
            ("content-length", "0"),
            ("x-ms-date", DATE),
            ("x-ms-version", "2021-08-06"),
            ("x-ms-meta-i0", "b"),
            ("x-ms-meta-i_", "a"),
        ]);
        let sts = string_to_sign("PUT", &h, "myaccount", &p, &q);
        assert!(sts.contains("x-ms-meta-i_:a\nx-ms-meta-i0:b\n"));
        assert!(signature_matches(
            &[key()],
            &sts,
            "Ql2HM3QFADE8mRmcvUDat6micyqeyTcpe9laJHusZWo="
        ));
        assert!(!signature_matches(
            &[key()],
            &sts,
            "ji97V/93nf1gTf4+3amWZaEZMgEUla2lWt39kZIZrVY="
        ));
    }

    #[test]
    fn sas_vectors() {
        let q = parse_query("st=2024-03-01T00%3A00%3A00Z&se=2024-03-02T00%3A00%3A00Z&sp=rwdlac&spr=https&sv=2021-08-06&ss=b&srt=sco&sig=1H5YLM7k8skMGSdLsZmQQGr4IBEqfaTzrF4lwFqCp1c%3D");
        let sas = Sas::from_query(&q).unwrap();
        assert!(sas.is_account());
        let sts = sas.account_sts("myaccount");
        assert_eq!(sts, "myaccount\nrwdlac\nb\nsco\n2024-03-01T00:00:00Z\n2024-03-02T00:00:00Z\n\nhttps\n2021-08-06\n\n");
        assert!(signature_matches(&[key()], &sts, &sas.sig));

        let sas = Sas {
            sv: "2021-08-06".into(),
            sr: Some("b".into()),
            sp: "r".into(),
            st: "2024-03-01T00:00:00Z".into(),
            se: "2024-03-02T00:00:00Z".into(),
            spr: "https".into(),
            sig: "39wZbSWKDCsSmJ+LnBNddudSIJZAT+oCXDFwljf6Eq4=".into(),
            ..Default::default()
        };
        let sts = sas.service_sts("/blob/myaccount/mycontainer/dir/file.txt");
        assert_eq!(sts, "r\n2024-03-01T00:00:00Z\n2024-03-02T00:00:00Z\n/blob/myaccount/mycontainer/dir/file.txt\n\n\nhttps\n2021-08-06\nb\n\n\n\n\n\n\n");
        assert!(signature_matches(&[key()], &sts, &sas.sig));
        assert!(parse_sas_time("2024-03-01T00:00:00Z").is_some());
    }
}
