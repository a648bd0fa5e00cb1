//! The emulator's Microsoft Entra ID stand-in (reference §7.5): identities,
//! bearer tokens, and the three token endpoints cpkfs uses:
//!
//! - client credentials: `POST /{tenant}/oauth2/v2.0/token` (form
//!   `client_id`, `client_secret`, `grant_type=client_credentials`,
//!   `scope=https://vault.azure.net/.default`; the v1 `/oauth2/token` with
//!   `resource=` too). Reached through `AZURE_AUTHORITY_HOST=https://HOST:PORT`:
//!   like `login.microsoftonline.com`, the authority host has no path, since
//!   MSAL and the SDKs take the first path segment as the tenant.
//! - the documents MSAL reads before its first token request: the OpenID
//!   configuration `GET /{tenant}/v2.0/.well-known/openid-configuration` (v1:
//!   `/{tenant}/.well-known/openid-configuration`) and instance discovery
//!   `GET /common/discovery/instance?authorization_endpoint=…`.
//! - IMDS: `GET /metadata/identity/oauth2/token?api-version=…&resource=…[&client_id=…]`
//!   with `Metadata: true` (numbers as strings, as IMDS sends them).
//! - App Service: `GET /__msi/token?api-version=2019-08-01&resource=…` with
//!   `X-IDENTITY-HEADER` (`IDENTITY_ENDPOINT=https://HOST:PORT/__msi/token`).
//!
//! Tokens are random opaque strings with an expiry; the vault endpoints look
//! them up to find the identity and its permissions.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The resource (audience) of Key Vault tokens.
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
/// The emulator's tenant id (the challenge names it; the token endpoint checks it).
pub const DEFAULT_TENANT: &str = "c0ffee00-cafe-4b1d-8e57-c9f5e1a7d0e1";
/// Default `X-IDENTITY-HEADER` secret of the App Service endpoint.
pub const DEFAULT_IDENTITY_HEADER: &str = "cpkfs-emulator-identity-header";

/// A configured identity: a service principal (with a client secret), a
/// managed identity (served by IMDS / App Service), or both.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub client_id: String,
    /// Secret for the client-credentials flow; None = not a service principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// e.g. `secrets/get`, `keys/unwrapKey`; `*` grants everything,
    /// `secrets/*` / `keys/*` a whole family.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Served by the IMDS and App Service endpoints.
    #[serde(default)]
    pub managed: bool,
}

impl Identity {
    pub fn allows(&self, perm: &str) -> bool {
        let family = perm.split('/').next().unwrap_or("");
        self.permissions
            .iter()
            .any(|p| p == "*" || p.eq_ignore_ascii_case(perm) || *p == format!("{family}/*"))
    }
}

/// Parse the emulator's `--vault-identity` flag:
/// `CLIENT_ID:SECRET:PERM,PERM…`. An empty SECRET makes a managed identity
/// (IMDS / App Service only); the pseudo-permission `+managed` also serves a
/// service principal from those endpoints.
pub fn parse_identity_flag(s: &str) -> Result<Identity, String> {
    let mut it = s.splitn(3, ':');
    let id = it.next().unwrap_or("");
    let secret = it.next().unwrap_or("");
    let perms = it.next().unwrap_or("");
    if id.is_empty() {
        return Err(format!(
            "--vault-identity {s}: expected CLIENT_ID:SECRET:PERM[,PERM…]"
        ));
    }
    let mut permissions = vec![];
    let mut managed = secret.is_empty();
    for p in perms.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if p == "+managed" {
            managed = true;
        } else {
            permissions.push(p.to_string());
        }
    }
    Ok(Identity {
        client_id: id.to_string(),
        client_secret: (!secret.is_empty()).then(|| secret.to_string()),
        permissions,
        managed,
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// What a token stands for.
#[derive(Clone, Debug)]
pub struct Grant {
    pub client_id: String,
    pub expires: u64,
}

/// Identities and issued tokens.
pub struct Entra {
    pub tenant: String,
    pub identity_header: String,
    pub token_lifetime: u64,
    pub identities: BTreeMap<String, Identity>,
    pub tokens: HashMap<String, Grant>,
    /// Tokens issued per flow ("client_credentials", "imds", "app_service").
    pub issued: BTreeMap<String, u64>,
}

impl Default for Entra {
    fn default() -> Self {
        Entra {
            tenant: DEFAULT_TENANT.to_string(),
            identity_header: DEFAULT_IDENTITY_HEADER.to_string(),
            token_lifetime: 3600,
            identities: BTreeMap::new(),
            tokens: HashMap::new(),
            issued: BTreeMap::new(),
        }
    }
}

/// A token-endpoint answer: status and JSON body.
pub type TokenReply = (u16, serde_json::Value);

fn aad_error(status: u16, error: &str, code: u64, desc: &str) -> TokenReply {
    (
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {desc}"),
            "error_codes": [code],
            "timestamp": chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string(),
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        }),
    )
}

impl Entra {
    fn issue(&mut self, client_id: &str, flow: &str) -> (String, u64) {
        let raw: [u8; 32] = rand::thread_rng().gen();
        let token = format!("emu.{}", hex(&raw));
        let expires = now_secs() + self.token_lifetime;
        // Forget expired tokens now and then.
        let now = now_secs();
        self.tokens.retain(|_, g| g.expires + 600 > now);
        self.tokens.insert(
            token.clone(),
            Grant {
                client_id: client_id.to_string(),
                expires,
            },
        );
        *self.issued.entry(flow.to_string()).or_default() += 1;
        (token, expires)
    }

    /// `POST /{tenant}/oauth2/v2.0/token` (v2: `scope`) or `/oauth2/token` (v1: `resource`).
    pub fn client_credentials(&mut self, tenant: &str, v1: bool, form: &[u8]) -> TokenReply {
        let f: HashMap<String, String> = url::form_urlencoded::parse(form).into_owned().collect();
        if tenant != self.tenant {
            return aad_error(
                400,
                "invalid_request",
                90002,
                &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
            );
        }
        if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        let audience_ok = if v1 {
            f.get("resource").map(|r| r.trim_end_matches('/')) == Some(VAULT_RESOURCE)
        } else {
            vault_scope(f.get("scope").map(String::as_str).unwrap_or(""))
        };
        if !audience_ok {
            return aad_error(
                400,
                "invalid_scope",
                70011,
                "The provided request must include a 'scope' input parameter: only https://vault.azure.net/.default is served by the emulator.",
            );
        }
        let client_id = f.get("client_id").cloned().unwrap_or_default();
        let Some(ident) = self.identities.get(&client_id) else {
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
            );
        };
        match (&ident.client_secret, f.get("client_secret")) {
            (Some(want), Some(got)) if subtle_eq(want, got) => {}
            _ => {
                return aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                )
            }
        }
        let (token, _) = self.issue(&client_id, "client_credentials");
        let life = self.token_lifetime;
        (
            200,
            json!({"token_type":"Bearer","expires_in":life,"ext_expires_in":life,"access_token":token}),
        )
    }

    fn managed_identity(&self, client_id: Option<&str>) -> Option<&Identity> {
        match client_id {
            Some(id) => self.identities.get(id).filter(|i| i.managed),
            None => self.identities.values().find(|i| i.managed),
        }
    }

    /// IMDS `GET /metadata/identity/oauth2/token`.
    pub fn imds(&mut self, query: &[(String, String)], headers: &http::HeaderMap) -> TokenReply {
        let q = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        if headers.contains_key("x-forwarded-for") {
            return (
                400,
                json!({"error":"invalid_request","error_description":"Request through a proxy is not allowed"}),
            );
        }
        if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
            return (
                400,
                json!({"error":"invalid_request","error_description":"Required metadata header not specified"}),
            );
        }
        if q("api-version").is_none() {
            return (
                400,
                json!({"error":"invalid_request","error_description":"Required query variable 'api-version' is missing"}),
            );
        }
        if q("resource").map(|r| r.trim_end_matches('/')) != Some(VAULT_RESOURCE) {
            return (
                400,
                json!({"error":"invalid_resource","error_description":"AADSTS500011: The resource principal was not found (the emulator serves only https://vault.azure.net)."}),
            );
        }
        let Some(id) = self
            .managed_identity(q("client_id"))
            .map(|i| i.client_id.clone())
        else {
            return (
                400,
                json!({"error":"invalid_request","error_description":"Identity not found"}),
            );
        };
        let (token, expires) = self.issue(&id, "imds");
        let life = self.token_lifetime;
        (
            200,
            json!({
                "access_token": token, "client_id": id,
                "expires_in": life.to_string(), "expires_on": expires.to_string(),
                "ext_expires_in": life.to_string(), "not_before": now_secs().to_string(),
                "resource": VAULT_RESOURCE, "token_type": "Bearer"
            }),
        )
    }

    /// App Service `GET {IDENTITY_ENDPOINT}` with `X-IDENTITY-HEADER`.
    pub fn app_service(
        &mut self,
        query: &[(String, String)],
        headers: &http::HeaderMap,
    ) -> TokenReply {
        let q = |n: &str| query.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let hdr = headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !subtle_eq(hdr, &self.identity_header) {
            return (
                401,
                json!({"statusCode":401,"message":"Unauthorized: the X-IDENTITY-HEADER is missing or wrong"}),
            );
        }
        if q("resource").map(|r| r.trim_end_matches('/')) != Some(VAULT_RESOURCE) {
            return (
                400,
                json!({"statusCode":400,"message":"The emulator serves only resource https://vault.azure.net"}),
            );
        }
        let Some(id) = self
            .managed_identity(q("client_id"))
            .map(|i| i.client_id.clone())
        else {
            return (
                400,
                json!({"statusCode":400,"message":"No managed identity found for the given client_id"}),
            );
        };
        let (token, expires) = self.issue(&id, "app_service");
        (
            200,
            json!({"access_token": token, "expires_on": expires.to_string(),
                   "resource": VAULT_RESOURCE, "token_type": "Bearer", "client_id": id}),
        )
    }

    /// The identity behind a bearer token: Ok, or Err(reason) for a 401.
    pub fn check(&self, bearer: &str) -> Result<Identity, &'static str> {
        let g = self
            .tokens
            .get(bearer)
            .ok_or("AKV10013: Token is not valid (unknown or revoked).")?;
        if g.expires <= now_secs() {
            return Err("AKV10021: The access token has expired.");
        }
        self.identities
            .get(&g.client_id)
            .cloned()
            .ok_or("AKV10013: Token is not valid (the identity was removed).")
    }
}

/// A v2 `scope` parameter asking for a Key Vault token. MSAL may add the
/// OpenID scopes (`openid profile offline_access`) to what the caller asked;
/// Entra ignores those for client credentials, and so does the emulator.
fn vault_scope(scope: &str) -> bool {
    let want = format!("{VAULT_RESOURCE}/.default");
    let mut found = false;
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        match s {
            "openid" | "profile" | "offline_access" => {}
            s if s == want => found = true,
            _ => return false,
        }
    }
    found
}

/// An Entra ID endpoint of the authority host (the emulator's main listener).
#[derive(Debug, PartialEq)]
pub enum EntraRoute {
    /// `/{tenant}/oauth2/v2.0/token`, or v1 `/{tenant}/oauth2/token`.
    Token { tenant: String, v1: bool },
    /// `/{tenant}/v2.0/.well-known/openid-configuration` (`v2`), or
    /// `/{tenant}/.well-known/openid-configuration`.
    OpenIdConfiguration { tenant: String, v2: bool },
    /// `/common/discovery/instance` (MSAL's authority validation).
    InstanceDiscovery,
}

/// Which Entra endpoint `path` is, if any. The first segment must be the
/// emulator's tenant or one of Entra's aliases (`common`, `organizations`),
/// and the rest one of the fixed tails, so blob paths never match unless an
/// account is named `common` or `organizations` and holds exactly such a path.
pub fn entra_route(tenant: &str, path: &str) -> Option<EntraRoute> {
    let rest = path.strip_prefix('/')?;
    let (first, tail) = rest.split_once('/')?;
    let known = first.eq_ignore_ascii_case(tenant) || matches!(first, "common" | "organizations");
    if !known {
        return None;
    }
    let t = first.to_string();
    match tail {
        "oauth2/v2.0/token" => Some(EntraRoute::Token {
            tenant: t,
            v1: false,
        }),
        "oauth2/token" => Some(EntraRoute::Token {
            tenant: t,
            v1: true,
        }),
        "v2.0/.well-known/openid-configuration" => Some(EntraRoute::OpenIdConfiguration {
            tenant: t,
            v2: true,
        }),
        ".well-known/openid-configuration" => Some(EntraRoute::OpenIdConfiguration {
            tenant: t,
            v2: false,
        }),
        "discovery/instance" if first == "common" => Some(EntraRoute::InstanceDiscovery),
        _ => None,
    }
}

/// The OpenID configuration of `base/tenant` (MSAL reads `token_endpoint`,
/// `authorization_endpoint` and `issuer`). The aliases get Entra's
/// `{tenantid}` placeholder in the issuer.
pub fn openid_configuration(base: &str, tenant: &str, v2: bool) -> TokenReply {
    let issuer_tenant = if matches!(tenant, "common" | "organizations") {
        "{tenantid}"
    } else {
        tenant
    };
    let (oauth, issuer, keys) = if v2 {
        (
            format!("{base}/{tenant}/oauth2/v2.0"),
            format!("{base}/{issuer_tenant}/v2.0"),
            format!("{base}/{tenant}/discovery/v2.0/keys"),
        )
    } else {
        (
            format!("{base}/{tenant}/oauth2"),
            format!("{base}/{issuer_tenant}/"),
            format!("{base}/common/discovery/keys"),
        )
    };
    (
        200,
        json!({
            "token_endpoint": format!("{oauth}/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": keys,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{oauth}/authorize"),
            "device_authorization_endpoint": format!("{oauth}/devicecode"),
            "end_session_endpoint": format!("{oauth}/logout"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "tenant_region_scope": null,
            "cloud_instance_name": "cpkfs-emulator",
        }),
    )
}

/// Instance discovery (`GET /common/discovery/instance?api-version=1.1&
/// authorization_endpoint=https://HOST/TENANT/oauth2/v2.0/authorize`): MSAL
/// asks it whether an authority is valid and where its OpenID configuration
/// is. Only the emulator's own host is valid; MSAL drops the port from the
/// `authorization_endpoint` it sends, so the answer puts it back.
pub fn instance_discovery(base: &str, tenant: &str, query: &[(String, String)]) -> TokenReply {
    let invalid = || {
        aad_error(
            400,
            "invalid_instance",
            50049,
            "Unknown or invalid instance.",
        )
    };
    let Some(endpoint) = query
        .iter()
        .find(|(k, _)| k == "authorization_endpoint")
        .and_then(|(_, v)| url::Url::parse(v).ok())
    else {
        return invalid();
    };
    let Ok(ours) = url::Url::parse(base) else {
        return invalid();
    };
    if endpoint.host_str() != ours.host_str() {
        return invalid();
    }
    let asked = endpoint
        .path_segments()
        .and_then(|mut s| s.next())
        .filter(|t| !t.is_empty())
        .unwrap_or(tenant);
    let netloc = base.split_once("://").map(|(_, h)| h).unwrap_or(base);
    (
        200,
        json!({
            "tenant_discovery_endpoint": format!("{base}/{asked}/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc]}],
        }),
    )
}

fn subtle_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_flag_and_permissions() {
        let i = parse_identity_flag("app1:s3cret:secrets/get,keys/*").unwrap();
        assert_eq!(i.client_secret.as_deref(), Some("s3cret"));
        assert!(!i.managed);
        assert!(i.allows("secrets/get") && i.allows("keys/unwrapKey"));
        assert!(!i.allows("secrets/set"));
        let m = parse_identity_flag("mi1::secrets/get").unwrap();
        assert!(m.managed && m.client_secret.is_none());
        let both = parse_identity_flag("x:y:*,+managed").unwrap();
        assert!(both.managed && both.allows("keys/create"));
        assert!(parse_identity_flag("").is_err());
    }

    #[test]
    fn client_credentials_flow() {
        let mut e = Entra::default();
        e.identities
            .insert("a".into(), parse_identity_flag("a:pw:secrets/get").unwrap());
        let form = |s: &str| {
            format!("client_id=a&client_secret={s}&grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default")
        };
        let (st, body) = e.client_credentials(DEFAULT_TENANT, false, form("pw").as_bytes());
        assert_eq!(st, 200, "{body}");
        let tok = body["access_token"].as_str().unwrap();
        assert_eq!(e.check(tok).unwrap().client_id, "a");
        let (st, body) = e.client_credentials(DEFAULT_TENANT, false, form("bad").as_bytes());
        assert_eq!((st, body["error"].as_str()), (401, Some("invalid_client")));
        let (st, _) = e.client_credentials("other", false, form("pw").as_bytes());
        assert_eq!(st, 400);
        assert!(e.check("nope").is_err());
        // MSAL's OpenID scopes next to the vault's are fine; another resource is not.
        let msal = "client_id=a&client_secret=pw&grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default+offline_access+openid+profile";
        assert_eq!(
            e.client_credentials(DEFAULT_TENANT, false, msal.as_bytes())
                .0,
            200
        );
        let other = "client_id=a&client_secret=pw&grant_type=client_credentials&scope=https%3A%2F%2Fstorage.azure.com%2F.default";
        assert_eq!(
            e.client_credentials(DEFAULT_TENANT, false, other.as_bytes())
                .0,
            400
        );
    }

    #[test]
    fn entra_routes_and_documents() {
        let t = DEFAULT_TENANT;
        let tok = |p: &str| entra_route(t, p);
        assert_eq!(
            tok(&format!("/{t}/oauth2/v2.0/token")),
            Some(EntraRoute::Token {
                tenant: t.into(),
                v1: false
            })
        );
        assert_eq!(
            tok("/common/discovery/instance"),
            Some(EntraRoute::InstanceDiscovery)
        );
        assert_eq!(
            tok(&format!("/{t}/v2.0/.well-known/openid-configuration")),
            Some(EntraRoute::OpenIdConfiguration {
                tenant: t.into(),
                v2: true
            })
        );
        // Blob paths and other tenants are not Entra's.
        assert_eq!(tok("/devstoreaccount1/c/oauth2/v2.0/token"), None);
        assert_eq!(tok("/other-tenant/oauth2/v2.0/token"), None);
        assert_eq!(tok(&format!("/{t}/oauth2/v2.0/authorize")), None);

        let base = "https://127.0.0.1:4430";
        let (st, doc) = openid_configuration(base, t, true);
        assert_eq!(st, 200);
        assert_eq!(
            doc["token_endpoint"],
            format!("{base}/{t}/oauth2/v2.0/token")
        );
        assert_eq!(doc["issuer"], format!("{base}/{t}/v2.0"));
        assert_eq!(
            openid_configuration(base, "common", true).1["issuer"],
            format!("{base}/{{tenantid}}/v2.0")
        );

        let q = |v: &str| vec![("authorization_endpoint".to_string(), v.to_string())];
        let (st, d) = instance_discovery(
            base,
            t,
            &q(&format!("https://127.0.0.1/{t}/oauth2/v2.0/authorize")),
        );
        assert_eq!(st, 200, "{d}");
        assert_eq!(
            d["tenant_discovery_endpoint"],
            format!("{base}/{t}/v2.0/.well-known/openid-configuration")
        );
        assert_eq!(d["metadata"][0]["aliases"][0], "127.0.0.1:4430");
        let (st, d) = instance_discovery(
            base,
            t,
            &q("https://login.example.com/x/oauth2/v2.0/authorize"),
        );
        assert_eq!((st, d["error"].as_str()), (400, Some("invalid_instance")));
    }
}
