//! Shared Key request signing (protocol reference §2.2–2.4). Pure functions:
//! the date is part of the request headers, so tests pin exact signatures.

use super::header_order::service_header_cmp;
use http::{HeaderMap, Method};
use url::Url;

/// The standard headers signed by position, in the service's order.
const STANDARD_HEADERS: [&str; 11] = [
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
];

fn header_joined(headers: &HeaderMap, name: &str) -> String {
    let vals: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    vals.join(",")
}

/// Trim and collapse runs of whitespace outside quoted strings.
fn canonical_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut in_quotes = false;
    let mut pending_space = false;
    for c in v.trim().chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// Build the Shared Key string-to-sign. Never log the result: with CPK it
/// contains the encryption key.
pub fn string_to_sign(method: &Method, url: &Url, headers: &HeaderMap, account: &str) -> String {
    let mut s = String::with_capacity(512);
    s.push_str(method.as_str());
    s.push('\n');
    for name in STANDARD_HEADERS {
        let v = header_joined(headers, name);
        if name == "content-length" && v == "0" {
            // Since 2015-02-21 a zero length is signed as the empty string.
        } else {
            s.push_str(&v);
        }
        s.push('\n');
    }
    // Canonicalized headers.
    let mut names: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-ms-"))
        .collect();
    names.sort_by(|a, b| service_header_cmp(a, b));
    names.dedup();
    for name in names {
        s.push_str(name);
        s.push(':');
        s.push_str(&canonical_value(&header_joined(headers, name)));
        s.push('\n');
    }
    // Canonicalized resource: account + encoded path as sent + sorted query.
    s.push('/');
    s.push_str(account);
    s.push_str(url.path());
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in url.query_pairs() {
        let k = k.to_lowercase();
        match params.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vals)) => vals.push(v.into_owned()),
            None => params.push((k, vec![v.into_owned()])),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, mut vals) in params {
        vals.sort();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&vals.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::AccountKey;
    use http::HeaderValue;

    const KEY: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    const DATE: &str = "Fri, 01 Mar 2024 12:00:00 GMT";

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn check(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        account: &str,
        key: &str,
        sts: &str,
        sig: &str,
    ) {
        let url = Url::parse(url).unwrap();
        let got = string_to_sign(&method, &url, &hm(headers), account);
        assert_eq!(got, sts);
        assert_eq!(AccountKey::from_base64(key).unwrap().sign(&got), sig);
    }

    #[test]
    fn vector_a_list_blobs_host_style() {
        check(
            Method::GET,
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&prefix=a%2F&delimiter=%2F",
            &[("x-ms-date", DATE), ("x-ms-version", "2021-08-06")],
            "myaccount",
            KEY,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-version:2021-08-06\n/myaccount/mycontainer\ncomp:list\ndelimiter:/\nprefix:a/\nrestype:container",
            "iWNmpMgo+P7KqLXHZu+vyRpnwivDzLIFVvCTxUaG+W4=",
        );
    }

    #[test]
    fn vector_b_path_style() {
        check(
            Method::GET,
            "http://127.0.0.1:10000/devstoreaccount1/mycontainer?restype=container&comp=list&prefix=a%2F&delimiter=%2F",
            &[("x-ms-date", DATE), ("x-ms-version", "2021-08-06")],
            "devstoreaccount1",
            crate::DEV_ACCOUNT_KEY,
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/mycontainer\ncomp:list\ndelimiter:/\nprefix:a/\nrestype:container",
            "MSAIU4HVKCFx6nl7w7fhYZ8KVA3HvPWIUl0rxTD+T7k=",
        );
    }

    #[test]
    fn vector_c_put_block_with_cpk() {
        check(
            Method::PUT,
            "https://myaccount.blob.core.windows.net/mycontainer/dir/file.txt?comp=block&blockid=YmxrLTAwMDE%3D",
            &[
                ("content-length", "11"),
                ("content-md5", "sQqNsWTgdUEFt6mb5y4/5Q=="),
                ("x-ms-date", DATE),
                ("x-ms-version", "2021-08-06"),
                ("x-ms-encryption-key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
                ("x-ms-encryption-key-sha256", "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0="),
                ("x-ms-encryption-algorithm", "AES256"),
                ("x-ms-lease-id", "f8b6f0b0-2d1a-4c59-8d37-3b2b1d6f5a01"),
            ],
            "myaccount",
            KEY,
            "PUT\n\n\n11\nsQqNsWTgdUEFt6mb5y4/5Q==\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-encryption-algorithm:AES256\nx-ms-encryption-key:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nx-ms-encryption-key-sha256:Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=\nx-ms-lease-id:f8b6f0b0-2d1a-4c59-8d37-3b2b1d6f5a01\nx-ms-version:2021-08-06\n/myaccount/mycontainer/dir/file.txt\nblockid:YmxrLTAwMDE=\ncomp:block",
            "Pc+SKHfiAETpaZMTORVXEy0FmFGcbng2NFURbH/nBoM=",
        );
    }

    #[test]
    fn vector_d_empty_put_blob() {
        check(
            Method::PUT,
            "https://myaccount.blob.core.windows.net/mycontainer/empty.bin",
            &[
                ("content-length", "0"),
                ("content-type", "application/octet-stream"),
                ("if-none-match", "*"),
                ("x-ms-blob-type", "BlockBlob"),
                ("x-ms-date", DATE),
                ("x-ms-version", "2021-08-06"),
                ("x-ms-meta-mode", "0644"),
                ("x-ms-meta-uid", "1000"),
            ],
            "myaccount",
            KEY,
            "PUT\n\n\n\n\napplication/octet-stream\n\n\n\n*\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-meta-mode:0644\nx-ms-meta-uid:1000\nx-ms-version:2021-08-06\n/myaccount/mycontainer/empty.bin",
            "dHgAzYFYWQxbmDLW2rHrc/Cs/uYk45pPkhyKevcPdYs=",
        );
    }

    #[test]
    fn vector_e_service_order_not_byte_order() {
        check(
            Method::PUT,
            "https://myaccount.blob.core.windows.net/mycontainer/f?comp=metadata",
            &[
                ("content-length", "0"),
                ("x-ms-date", DATE),
                ("x-ms-version", "2021-08-06"),
                ("x-ms-meta-i0", "b"),
                ("x-ms-meta-i_", "a"),
            ],
            "myaccount",
            KEY,
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 01 Mar 2024 12:00:00 GMT\nx-ms-meta-i_:a\nx-ms-meta-i0:b\nx-ms-version:2021-08-06\n/myaccount/mycontainer/f\ncomp:metadata",
            "Ql2HM3QFADE8mRmcvUDat6micyqeyTcpe9laJHusZWo=",
        );
        // The byte-order signature the service rejects must differ from ours.
        let url = Url::parse("https://myaccount.blob.core.windows.net/mycontainer/f?comp=metadata")
            .unwrap();
        let sts = string_to_sign(
            &Method::PUT,
            &url,
            &hm(&[
                ("x-ms-date", DATE),
                ("x-ms-version", "2021-08-06"),
                ("x-ms-meta-i0", "b"),
                ("x-ms-meta-i_", "a"),
            ]),
            "myaccount",
        );
        assert_ne!(
            AccountKey::from_base64(KEY).unwrap().sign(&sts),
            "ji97V/93nf1gTf4+3amWZaEZMgEUla2lWt39kZIZrVY="
        );
    }

    #[test]
    fn repeated_query_values_sorted_and_whitespace_collapsed() {
        let url = Url::parse(
            "https://a.blob.core.windows.net/c?include=snapshots&include=metadata&comp=list",
        )
        .unwrap();
        let sts = string_to_sign(
            &Method::GET,
            &url,
            &hm(&[("x-ms-meta-a", "  x   y \t z ")]),
            "a",
        );
        assert!(
            sts.ends_with("x-ms-meta-a:x y z\n/a/c\ncomp:list\ninclude:metadata,snapshots"),
            "{sts}"
        );
    }
}
