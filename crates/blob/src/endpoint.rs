//! Endpoint and URL building. Host style (`https://acct.blob.core.windows.net`)
//! for Azure; path style (`https://127.0.0.1:10000/acct`) for emulators.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

/// Everything but `A-Z a-z 0-9 - _ . ~ /` is escaped in blob paths.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// Query values: the same minus `/`, so `+`, `=`, `/` and spaces are escaped.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode_query_value(v: &str) -> String {
    utf8_percent_encode(v, QUERY).to_string()
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// scheme://host[:port][/account] without a trailing slash.
    base: String,
    account: String,
    path_style: bool,
    https: bool,
}

impl Endpoint {
    /// `url` is the service endpoint. Path style is used when the URL already
    /// carries a path, or names an IP address or `localhost` (emulators).
    pub fn new(url: &str, account: &str) -> Result<Self, String> {
        let u =
            Url::parse(url.trim()).map_err(|e| format!("endpoint {url:?} is not a URL: {e}"))?;
        let https = match u.scheme() {
            "https" => true,
            "http" => false,
            s => return Err(format!("endpoint scheme must be http or https, not {s}")),
        };
        let host = u
            .host_str()
            .ok_or_else(|| format!("endpoint {url:?} has no host"))?;
        if account.is_empty() {
            return Err("the account name is empty".into());
        }
        let mut base = format!(
            "{}://{}",
            u.scheme(),
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            }
        );
        if let Some(p) = u.port() {
            base.push_str(&format!(":{p}"));
        }
        let path = u.path().trim_end_matches('/');
        let is_local = host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok()
            || host.starts_with('[');
        let path_style = !path.is_empty() || is_local;
        if !path.is_empty() {
            base.push_str(path);
        } else if path_style {
            base.push('/');
            base.push_str(account);
        }
        Ok(Endpoint {
            base,
            account: account.to_string(),
            path_style,
            https,
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }
    pub fn is_https(&self) -> bool {
        self.https
    }
    pub fn is_path_style(&self) -> bool {
        self.path_style
    }
    pub fn base(&self) -> &str {
        &self.base
    }

    fn with_query(mut s: String, query: &[(&str, &str)]) -> Url {
        for (i, (k, v)) in query.iter().enumerate() {
            s.push(if i == 0 { '?' } else { '&' });
            s.push_str(k);
            s.push('=');
            s.push_str(&encode_query_value(v));
        }
        Url::parse(&s).expect("URL built from a valid base")
    }

    pub fn container_url(&self, container: &str, query: &[(&str, &str)]) -> Url {
        Self::with_query(format!("{}/{}", self.base, container), query)
    }

    pub fn blob_url(&self, container: &str, blob: &str, query: &[(&str, &str)]) -> Url {
        Self::with_query(
            format!(
                "{}/{}/{}",
                self.base,
                container,
                utf8_percent_encode(blob, PATH)
            ),
            query,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_path_style() {
        let e = Endpoint::new("https://myaccount.blob.core.windows.net", "myaccount").unwrap();
        assert!(!e.is_path_style());
        assert_eq!(
            e.blob_url("c", "dir/a b+c=.txt", &[("comp", "block"), ("blockid", "YQ+/=")]).as_str(),
            "https://myaccount.blob.core.windows.net/c/dir/a%20b%2Bc%3D.txt?comp=block&blockid=YQ%2B%2F%3D"
        );
        let e = Endpoint::new("https://127.0.0.1:10000", "devstoreaccount1").unwrap();
        assert!(e.is_path_style());
        assert_eq!(
            e.container_url("c", &[("restype", "container")]).as_str(),
            "https://127.0.0.1:10000/devstoreaccount1/c?restype=container"
        );
        let e = Endpoint::new(
            "http://127.0.0.1:10000/devstoreaccount1/",
            "devstoreaccount1",
        )
        .unwrap();
        assert_eq!(
            e.blob_url("c", "x", &[]).as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/c/x"
        );
        assert!(!e.is_https());
        assert!(Endpoint::new("ftp://x", "a").is_err());
        let u = e.blob_url("c", "é/ü", &[]);
        assert_eq!(u.path(), "/devstoreaccount1/c/%C3%A9/%C3%BC");
    }
}
