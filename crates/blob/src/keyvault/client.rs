//! Key Vault data-plane client: secrets get/set, key get, wrap/unwrap,
//! encrypt/decrypt, with the 401 challenge flow of reference §7.2.
//!
//! Object URLs are `{vault}/secrets/{name}[/{version}]` and
//! `{vault}/keys/{name}[/{version}]`, where `{vault}` is
//! `https://NAME.vault.azure.net` in Azure or `https://127.0.0.1:PORT` (a
//! vault listener) on the bundled emulator. Everything before `/secrets/` or
//! `/keys/` is taken as the vault base, so a vault behind a path prefix (a
//! proxy) works too.

use super::credential::{TokenCredential, TokenSource};
use super::{VaultError, API_VERSION};
use crate::secret::{SecretBytes, SecretString};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secrets,
    Keys,
}

/// A parsed secret or key URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    /// The vault base, e.g. `https://myvault.vault.azure.net`.
    pub vault: String,
    pub kind: Kind,
    pub name: String,
    pub version: Option<String>,
}

impl ObjectUrl {
    pub fn parse(url: &str, kind: Kind) -> Result<ObjectUrl, VaultError> {
        let word = match kind {
            Kind::Secrets => "secrets",
            Kind::Keys => "keys",
        };
        let bad = || {
            VaultError::Config(format!(
                "{url:?} is not a Key Vault {} URL (expected https://VAULT/{word}/NAME[/VERSION])",
                &word[..word.len() - 1]
            ))
        };
        let u = url::Url::parse(url.trim()).map_err(|_| bad())?;
        if u.scheme() != "https" {
            return Err(VaultError::Config(format!(
                "{url}: Key Vault URLs must be https"
            )));
        }
        let path = u.path().trim_end_matches('/');
        let needle = format!("/{word}/");
        let idx = path.rfind(&needle).ok_or_else(bad)?;
        let rest = &path[idx + needle.len()..];
        let mut it = rest.split('/');
        let name = it.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
        let version = it.next().filter(|v| !v.is_empty()).map(str::to_string);
        if it.next().is_some() {
            return Err(bad());
        }
        let mut base = u.clone();
        base.set_path(&path[..idx]);
        base.set_query(None);
        Ok(ObjectUrl {
            vault: base.as_str().trim_end_matches('/').to_string(),
            kind,
            name: name.to_string(),
            version,
        })
    }

    /// `{vault}/{kind}/{name}[/{version}]`.
    pub fn url(&self) -> String {
        let word = match self.kind {
            Kind::Secrets => "secrets",
            Kind::Keys => "keys",
        };
        match &self.version {
            Some(v) => format!("{}/{word}/{}/{v}", self.vault, self.name),
            None => format!("{}/{word}/{}", self.vault, self.name),
        }
    }
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// Client settings.
#[derive(Clone, Default)]
pub struct VaultOptions {
    /// Extra CA certificates (PEM) to trust, e.g. the emulator's.
    pub ca_pem: Option<Vec<u8>>,
    /// Accept a challenge whose resource's domain is not a suffix of the
    /// vault's host (test/emulator only: the SDKs'
    /// `disable_challenge_resource_verification`).
    pub disable_challenge_verification: bool,
}

#[derive(Clone, Debug)]
struct Challenge {
    scope: String,
    tenant: Option<String>,
}

/// A Key Vault client for any number of vaults, one identity.
pub struct VaultClient {
    http: reqwest::Client,
    cred: TokenCredential,
    challenges: Mutex<HashMap<String, Challenge>>,
    opts: VaultOptions,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("credential", &self.cred)
            .finish()
    }
}

/// An error with its sources, for messages (reqwest hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parse `Bearer authorization="…", resource="…"[, scope="…"]`.
fn parse_challenge(h: &str) -> HashMap<String, String> {
    let h = h.trim();
    let h = h
        .strip_prefix("Bearer")
        .or_else(|| h.strip_prefix("bearer"))
        .unwrap_or(h);
    let mut out = HashMap::new();
    for part in h.split(',') {
        if let Some((k, v)) = part.split_once('=') {
            out.insert(
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            );
        }
    }
    out
}

impl VaultClient {
    pub fn new(source: TokenSource, opts: VaultOptions) -> Result<VaultClient, VaultError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .http1_only();
        if let Some(pem) = &opts.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                VaultError::Config(format!("the vault CA file is not valid PEM: {e}"))
            })?;
            if certs.is_empty() {
                return Err(VaultError::Config(
                    "the vault CA file holds no certificate".into(),
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| VaultError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(VaultClient {
            cred: TokenCredential::new(source, http.clone()),
            http,
            challenges: Mutex::new(HashMap::new()),
            opts,
        })
    }

    pub fn credential(&self) -> &TokenCredential {
        &self.cred
    }

    fn check_challenge(
        &self,
        vault: &str,
        params: &HashMap<String, String>,
    ) -> Result<Challenge, VaultError> {
        let resource = params.get("resource").cloned();
        let scope = match (params.get("scope"), &resource) {
            (Some(s), _) => s.clone(),
            (None, Some(r)) => format!("{}/.default", r.trim_end_matches('/')),
            (None, None) => {
                return Err(VaultError::Challenge(format!(
                    "{vault} sent a challenge without resource or scope"
                )))
            }
        };
        // The tenant is the first path segment of the authority URI
        // (`https://login.microsoftonline.com/{tenant}`), as the Azure SDKs
        // read it.
        let tenant = params
            .get("authorization")
            .or_else(|| params.get("authorization_uri"))
            .and_then(|a| url::Url::parse(a).ok())
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next().map(str::to_string))
            })
            .filter(|t| !t.is_empty());
        let res_host = url::Url::parse(scope.trim_end_matches("/.default"))
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let vault_host = url::Url::parse(vault)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        if !vault_host.ends_with(&format!(".{res_host}")) {
            if !self.opts.disable_challenge_verification {
                return Err(VaultError::Challenge(format!(
                    "the vault host {vault_host} is not in the domain of the challenge's resource {res_host}; \
                     for an emulator set vault_disable_challenge_verification"
                )));
            }
            tracing::debug!(
                vault_host,
                res_host,
                "challenge domain check disabled by setting"
            );
        }
        Ok(Challenge { scope, tenant })
    }

    /// One authorized request; `permission` names what a 403 means.
    async fn call(
        &self,
        method: reqwest::Method,
        vault: &str,
        url: &str,
        body: Option<Value>,
        permission: &'static str,
        what: &str,
    ) -> Result<Value, VaultError> {
        let mut challenged_after_token = false;
        let mut transient = 0u32;
        loop {
            let ch = self.challenges.lock().unwrap().get(vault).cloned();
            let token = match &ch {
                Some(c) => Some(self.cred.token(&c.scope, c.tenant.as_deref()).await?),
                None => None,
            };
            let mut req = self
                .http
                .request(method.clone(), url)
                .query(&[("api-version", API_VERSION)]);
            match (&token, &body) {
                (Some(t), Some(b)) => {
                    req = req
                        .bearer_auth(t.expose())
                        .header("content-type", "application/json")
                        .body(b.to_string())
                }
                (Some(t), None) => req = req.bearer_auth(t.expose()),
                // The challenge probe carries no body (as the SDKs do).
                (None, Some(_)) => {
                    req = req
                        .header("content-type", "application/json")
                        .header("content-length", "0")
                }
                (None, None) => {}
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    transient += 1;
                    if transient < 3 && (e.is_connect() || e.is_timeout()) {
                        tokio::time::sleep(Duration::from_millis(250 << transient)).await;
                        continue;
                    }
                    return Err(VaultError::Unreachable {
                        url: vault.to_string(),
                        detail: error_chain(&e),
                    });
                }
            };
            let status = resp.status().as_u16();
            if status == 401 {
                let h = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let text = resp.text().await.unwrap_or_default();
                if let (Some(c), true) = (&ch, token.is_some()) {
                    self.cred.invalidate(&c.scope, c.tenant.as_deref());
                    if challenged_after_token {
                        let msg = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                            .unwrap_or(text);
                        return Err(VaultError::Unauthorized {
                            identity: self.cred.source().identity(),
                            message: msg,
                        });
                    }
                    challenged_after_token = true;
                }
                let Some(h) = h else {
                    return Err(VaultError::Challenge(format!(
                        "{vault} answered 401 without WWW-Authenticate"
                    )));
                };
                let c = self.check_challenge(vault, &parse_challenge(&h))?;
                self.challenges.lock().unwrap().insert(vault.to_string(), c);
                continue;
            }
            if (status == 429 || status >= 500) && transient < 3 {
                transient += 1;
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_millis(500 << transient))
                    .min(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = resp.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                if ch.is_none() {
                    // The vault answered without authentication (a probe for
                    // a GET); fine.
                }
                return serde_json::from_str(&text).map_err(|e| VaultError::BadResponse {
                    operation: permission,
                    detail: format!("not JSON: {e}"),
                });
            }
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let code = v["error"]["code"].as_str().unwrap_or("").to_string();
            let message = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(match status {
                403 if message.contains("disabled") => VaultError::Disabled {
                    what: what.to_string(),
                    message,
                },
                403 => VaultError::Forbidden {
                    permission,
                    identity: self.cred.source().identity(),
                    message,
                },
                404 => VaultError::NotFound {
                    what: what.to_string(),
                    code,
                    message,
                },
                _ => VaultError::Service {
                    operation: permission,
                    status,
                    code,
                    message,
                },
            });
        }
    }

    /// The value of a secret (latest version unless the URL names one) and its id.
    pub async fn get_secret(&self, url: &str) -> Result<(SecretString, String), VaultError> {
        let o = ObjectUrl::parse(url, Kind::Secrets)?;
        let what = format!("secret {o}");
        let v = self
            .call(
                reqwest::Method::GET,
                &o.vault,
                &o.url(),
                None,
                "secrets/get",
                &what,
            )
            .await?;
        let value = v["value"].as_str().ok_or_else(|| VaultError::BadResponse {
            operation: "secrets/get",
            detail: "no value".into(),
        })?;
        Ok((
            SecretString::new(value),
            v["id"].as_str().unwrap_or("").to_string(),
        ))
    }

    /// Store a new version of a secret; returns its id (with version).
    pub async fn set_secret(&self, url: &str, value: &SecretString) -> Result<String, VaultError> {
        let mut o = ObjectUrl::parse(url, Kind::Secrets)?;
        o.version = None;
        let what = format!("secret {o}");
        let v = self
            .call(
                reqwest::Method::PUT,
                &o.vault,
                &o.url(),
                Some(json!({"value": value.expose()})),
                "secrets/set",
                &what,
            )
            .await?;
        Ok(v["id"].as_str().unwrap_or("").to_string())
    }

    /// The ids (with versions) of every version of a secret.
    pub async fn secret_versions(&self, url: &str) -> Result<Vec<String>, VaultError> {
        let mut o = ObjectUrl::parse(url, Kind::Secrets)?;
        o.version = None;
        let what = format!("secret {o}");
        let u = format!("{}/versions", o.url());
        let v = self
            .call(
                reqwest::Method::GET,
                &o.vault,
                &u,
                None,
                "secrets/list",
                &what,
            )
            .await?;
        Ok(v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The key bundle (public part) of a key version (latest if none).
    pub async fn get_key(&self, url: &str) -> Result<Value, VaultError> {
        let o = ObjectUrl::parse(url, Kind::Keys)?;
        let what = format!("key {o}");
        self.call(
            reqwest::Method::GET,
            &o.vault,
            &o.url(),
            None,
            "keys/get",
            &what,
        )
        .await
    }

    /// Create a key (or a new version of it): `{"kty":"RSA","key_size":2048,…}`.
    pub async fn create_key(&self, url: &str, spec: Value) -> Result<Value, VaultError> {
        let o = ObjectUrl::parse(url, Kind::Keys)?;
        let what = format!("key {o}");
        let u = format!("{}/keys/{}/create", o.vault, o.name);
        self.call(
            reqwest::Method::POST,
            &o.vault,
            &u,
            Some(spec),
            "keys/create",
            &what,
        )
        .await
    }

    /// A full key id with version: as given, or the latest version's `kid`
    /// (needs `keys/get`).
    pub async fn resolve_kid(&self, url: &str) -> Result<String, VaultError> {
        let o = ObjectUrl::parse(url, Kind::Keys)?;
        if o.version.is_some() {
            return Ok(o.url());
        }
        let b = self.get_key(url).await?;
        b["key"]["kid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| VaultError::BadResponse {
                operation: "keys/get",
                detail: "no kid".into(),
            })
    }

    /// `wrapkey` / `unwrapkey` / `encrypt` / `decrypt` with `alg` on a key
    /// version. Returns (kid, output).
    pub async fn key_op(
        &self,
        kid: &str,
        op: &str,
        alg: &str,
        input: &[u8],
    ) -> Result<(String, SecretBytes), VaultError> {
        let o = ObjectUrl::parse(kid, Kind::Keys)?;
        let permission: &'static str = match op {
            "wrapkey" => "keys/wrapKey",
            "unwrapkey" => "keys/unwrapKey",
            "encrypt" => "keys/encrypt",
            "decrypt" => "keys/decrypt",
            _ => return Err(VaultError::Config(format!("unknown key operation {op}"))),
        };
        let what = format!("key {o}");
        let u = format!("{}/{op}", o.url());
        let v = self
            .call(
                reqwest::Method::POST,
                &o.vault,
                &u,
                Some(json!({"alg": alg, "value": B64URL.encode(input)})),
                permission,
                &what,
            )
            .await?;
        let out = v["value"]
            .as_str()
            .and_then(|s| B64URL.decode(s.trim_end_matches('=')).ok())
            .ok_or_else(|| VaultError::BadResponse {
                operation: permission,
                detail: "no base64url value".into(),
            })?;
        Ok((
            v["kid"].as_str().unwrap_or(kid).to_string(),
            SecretBytes::new(out),
        ))
    }

    pub async fn wrap_key(
        &self,
        kid: &str,
        alg: &str,
        key: &[u8],
    ) -> Result<(String, Vec<u8>), VaultError> {
        let (kid, out) = self.key_op(kid, "wrapkey", alg, key).await?;
        Ok((kid, out.expose().to_vec()))
    }

    pub async fn unwrap_key(
        &self,
        kid: &str,
        alg: &str,
        wrapped: &[u8],
    ) -> Result<SecretBytes, VaultError> {
        Ok(self.key_op(kid, "unwrapkey", alg, wrapped).await?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls() {
        let o = ObjectUrl::parse("https://v1.vault.azure.net/secrets/acct", Kind::Secrets).unwrap();
        assert_eq!(o.vault, "https://v1.vault.azure.net");
        assert_eq!((o.name.as_str(), o.version.as_deref()), ("acct", None));
        // The emulator: a vault at the root of its own listener.
        let o = ObjectUrl::parse("https://127.0.0.1:9000/keys/k1/0123abcd", Kind::Keys).unwrap();
        assert_eq!(o.vault, "https://127.0.0.1:9000");
        assert_eq!(o.version.as_deref(), Some("0123abcd"));
        assert_eq!(o.url(), "https://127.0.0.1:9000/keys/k1/0123abcd");
        // A vault behind a path prefix.
        let o = ObjectUrl::parse("https://proxy.example/kv/v1/keys/k1", Kind::Keys).unwrap();
        assert_eq!(o.vault, "https://proxy.example/kv/v1");
        assert!(ObjectUrl::parse("https://v.vault.azure.net/keys/k", Kind::Secrets).is_err());
        assert!(ObjectUrl::parse("http://v.vault.azure.net/keys/k", Kind::Keys).is_err());
        assert!(ObjectUrl::parse("https://v.vault.azure.net/keys/k/1/2", Kind::Keys).is_err());
    }

    #[test]
    fn challenge_parsing_and_domain_check() {
        let p = parse_challenge(
            r#"Bearer authorization="https://login.windows.net/72f988bf", resource="https://vault.azure.net""#,
        );
        let c = VaultClient::new(
            TokenSource::Imds {
                base: "http://x".into(),
                client_id: None,
            },
            VaultOptions::default(),
        )
        .unwrap();
        let ch = c
            .check_challenge("https://myvault.vault.azure.net", &p)
            .unwrap();
        assert_eq!(ch.scope, "https://vault.azure.net/.default");
        assert_eq!(ch.tenant.as_deref(), Some("72f988bf"));
        // The emulator's challenge: authority host with a port, tenant first.
        let emu = parse_challenge(
            r#"Bearer authorization="https://127.0.0.1:4430/c0ffee00", resource="https://vault.azure.net""#,
        );
        assert_eq!(
            c.check_challenge("https://myvault.vault.azure.net", &emu)
                .unwrap()
                .tenant
                .as_deref(),
            Some("c0ffee00")
        );
        let e = c.check_challenge("https://127.0.0.1:1", &p).unwrap_err();
        assert!(
            e.to_string()
                .contains("vault_disable_challenge_verification"),
            "{e}"
        );
        assert!(c.check_challenge("https://evil.example.com", &p).is_err());
        let c2 = VaultClient::new(
            TokenSource::Imds {
                base: "http://x".into(),
                client_id: None,
            },
            VaultOptions {
                disable_challenge_verification: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c2.check_challenge("https://127.0.0.1:1", &p).is_ok());
    }
}
