//! Key Vault: the client against the emulator's vault (token flows, the
//! challenge, secrets with versions, wrap/unwrap with every algorithm,
//! refusals), then `cpkfs keygen` and mounts with keys from the vault.

mod common;

use cpkfs::blob::secret::SecretString;
use cpkfs::emulator::token::Identity;
use cpkfs::emulator::{self, EmulatorConfig, EmulatorHandle};
use cpkfs::keyvault::{TokenSource, VaultClient, VaultError, VaultOptions};
use serde_json::json;
use std::collections::HashMap;

fn ident(id: &str, secret: Option<&str>, perms: &[&str], managed: bool) -> Identity {
    Identity {
        client_id: id.into(),
        client_secret: secret.map(String::from),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        managed,
    }
}

async fn start(identities: Vec<Identity>, lifetime: Option<u64>) -> EmulatorHandle {
    emulator::start(EmulatorConfig {
        vault_identities: identities,
        vault_token_lifetime: lifetime,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn client(h: &EmulatorHandle, env: &[(&str, String)]) -> VaultClient {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let src = TokenSource::from_env(&|k| map.get(k).cloned()).unwrap();
    VaultClient::new(
        src,
        VaultOptions {
            ca_pem: h.ca_pem.clone().map(String::into_bytes),
            disable_challenge_verification: true,
        },
    )
    .unwrap()
}

fn sp_env(h: &EmulatorHandle, id: &str, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_CLIENT_ID", id.to_string()),
        ("AZURE_CLIENT_SECRET", secret.to_string()),
        ("AZURE_AUTHORITY_HOST", format!("{}/__entra", h.url)),
    ]
}

async fn admin(h: &EmulatorHandle, path: &str, body: serde_json::Value) -> serde_json::Value {
    let c = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(h.ca_pem.as_ref().unwrap().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let r = if body.is_null() {
        c.get(format!("{}{path}", h.url)).send().await.unwrap()
    } else {
        c.post(format!("{}{path}", h.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    };
    assert!(r.status().is_success(), "{path}: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn client_credentials_challenge_and_secret_versions() {
    let h = start(
        vec![ident("app1", Some("pw1"), &["secrets/*"], false)],
        None,
    )
    .await;
    let vault = format!("{}/__vault/v1", h.url);
    let c = client(&h, &sp_env(&h, "app1", "pw1"));
    let url = format!("{vault}/secrets/acct");
    let id1 = c.set_secret(&url, &SecretString::new("one")).await.unwrap();
    let id2 = c.set_secret(&url, &SecretString::new("two")).await.unwrap();
    assert_ne!(id1, id2);
    assert!(id1.starts_with(&format!("{url}/")), "{id1}");
    let (v, id) = c.get_secret(&url).await.unwrap();
    assert_eq!((v.expose(), id.as_str()), ("two", id2.as_str()));
    let (v, _) = c.get_secret(&id1).await.unwrap();
    assert_eq!(v.expose(), "one");
    assert_eq!(
        c.secret_versions(&url).await.unwrap(),
        vec![id1.clone(), id2.clone()]
    );
    let e = c
        .get_secret(&format!("{vault}/secrets/nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, VaultError::NotFound { ref code, .. } if code == "SecretNotFound"),
        "{e}"
    );

    // Revoked tokens: the client re-runs the challenge and gets a new one.
    admin(&h, "/__admin/vault/revoke-tokens", json!({})).await;
    assert_eq!(c.get_secret(&url).await.unwrap().0.expose(), "two");
    let st = admin(&h, "/__admin/vault", serde_json::Value::Null).await;
    assert_eq!(st["tokens_issued"]["client_credentials"], 2, "{st}");

    // A disabled version is refused as such.
    admin(&h, "/__admin/vault/enabled", json!({"vault":"v1","kind":"secrets","name":"acct","version": id1.rsplit('/').next().unwrap(),"enabled":false})).await;
    let e = c.get_secret(&id1).await.unwrap_err();
    assert!(matches!(e, VaultError::Disabled { .. }), "{e}");

    // Without the emulator setting, the challenge's domain check refuses 127.0.0.1.
    let strict = VaultClient::new(
        TokenSource::from_env(&|k| {
            sp_env(&h, "app1", "pw1")
                .into_iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v)
        })
        .unwrap(),
        VaultOptions {
            ca_pem: h.ca_pem.clone().map(String::into_bytes),
            disable_challenge_verification: false,
        },
    )
    .unwrap();
    let e = strict.get_secret(&url).await.unwrap_err();
    assert!(matches!(e, VaultError::Challenge(_)), "{e}");

    // A wrong client secret: a token error naming the identity, never the secret.
    let bad = client(&h, &sp_env(&h, "app1", "wrong-secret"));
    let e = bad.get_secret(&url).await.unwrap_err().to_string();
    assert!(
        e.contains("app1") && e.contains("invalid_client") && !e.contains("wrong-secret"),
        "{e}"
    );

    // An unreachable vault.
    let e = c
        .get_secret("https://127.0.0.1:1/__vault/v1/secrets/acct")
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::Unreachable { .. }), "{e}");
    h.shutdown().await;
}

#[tokio::test]
async fn managed_identity_imds_and_app_service() {
    let h = start(
        vec![
            ident("setter", Some("s"), &["secrets/set"], false),
            ident("mi1", None, &["secrets/get"], true),
        ],
        None,
    )
    .await;
    let url = format!("{}/__vault/v2/secrets/s", h.url);
    client(&h, &sp_env(&h, "setter", "s"))
        .set_secret(&url, &SecretString::new("hello"))
        .await
        .unwrap();
    let imds = client(&h, &[("CPKFS_IMDS_ENDPOINT", h.url.clone())]);
    assert_eq!(imds.get_secret(&url).await.unwrap().0.expose(), "hello");
    let imds_uami = client(
        &h,
        &[
            ("CPKFS_IMDS_ENDPOINT", h.url.clone()),
            ("AZURE_CLIENT_ID", "mi1".into()),
        ],
    );
    assert_eq!(
        imds_uami.get_secret(&url).await.unwrap().0.expose(),
        "hello"
    );
    let app = client(
        &h,
        &[
            ("IDENTITY_ENDPOINT", format!("{}/__msi/token", h.url)),
            (
                "IDENTITY_HEADER",
                emulator::token::DEFAULT_IDENTITY_HEADER.into(),
            ),
        ],
    );
    assert_eq!(app.get_secret(&url).await.unwrap().0.expose(), "hello");
    let wrong = client(
        &h,
        &[
            ("IDENTITY_ENDPOINT", format!("{}/__msi/token", h.url)),
            ("IDENTITY_HEADER", "nope".into()),
        ],
    );
    let e = wrong.get_secret(&url).await.unwrap_err();
    assert!(matches!(e, VaultError::Token { .. }), "{e}");
    // The managed identity may read but not write.
    let e = imds
        .set_secret(&url, &SecretString::new("x"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("refused secrets/set for identity"),
        "{e}"
    );
    let st = admin(&h, "/__admin/vault", serde_json::Value::Null).await;
    assert_eq!(st["tokens_issued"]["imds"], 2, "{st}");
    assert_eq!(st["tokens_issued"]["app_service"], 1, "{st}");
    h.shutdown().await;
}

#[tokio::test]
async fn wrap_unwrap_every_algorithm_and_refusals() {
    let h = start(
        vec![
            ident("admin", Some("a"), &["keys/*"], false),
            ident("wrapper", Some("w"), &["keys/wrapKey", "keys/get"], false),
        ],
        None,
    )
    .await;
    let vault = format!("{}/__vault/kv", h.url);
    let c = client(&h, &sp_env(&h, "admin", "a"));
    let rsa = c
        .create_key(
            &format!("{vault}/keys/rsa1"),
            json!({"kty":"RSA","key_size":2048}),
        )
        .await
        .unwrap();
    assert!(rsa["key"]["n"].is_string() && rsa["key"]["e"] == "AQAB");
    assert!(
        rsa["key"].get("d").is_none(),
        "private parts are never returned"
    );
    let oct = c
        .create_key(
            &format!("{vault}/keys/oct1"),
            json!({"kty":"oct-HSM","key_size":256}),
        )
        .await
        .unwrap();
    let rsa_kid = rsa["key"]["kid"].as_str().unwrap().to_string();
    let oct_kid = oct["key"]["kid"].as_str().unwrap().to_string();
    let cpk: [u8; 32] = rand::random();
    for (kid, alg, len) in [
        (&rsa_kid, "RSA-OAEP", 256),
        (&rsa_kid, "RSA-OAEP-256", 256),
        (&oct_kid, "A256KW", 40),
    ] {
        let (k, w) = c.wrap_key(kid, alg, &cpk).await.unwrap();
        assert_eq!((&k, w.len()), (kid, len), "{alg}");
        assert_eq!(
            c.unwrap_key(kid, alg, &w).await.unwrap().expose(),
            &cpk,
            "{alg}"
        );
    }
    for alg in ["RSA-OAEP", "RSA-OAEP-256"] {
        let (_, ct) = c.key_op(&rsa_kid, "encrypt", alg, b"hello").await.unwrap();
        let (_, pt) = c
            .key_op(&rsa_kid, "decrypt", alg, ct.expose())
            .await
            .unwrap();
        assert_eq!(pt.expose(), b"hello");
    }
    // No version: resolve the latest.
    assert_eq!(
        c.resolve_kid(&format!("{vault}/keys/rsa1")).await.unwrap(),
        rsa_kid
    );

    // An identity without keys/unwrapKey.
    let w = client(&h, &sp_env(&h, "wrapper", "w"));
    let (_, wrapped) = w.wrap_key(&rsa_kid, "RSA-OAEP-256", &cpk).await.unwrap();
    let e = w
        .unwrap_key(&rsa_kid, "RSA-OAEP-256", &wrapped)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string().split(" (403").next().unwrap(),
        "Key Vault refused keys/unwrapKey for identity wrapper"
    );

    // A disabled key version, then a deleted key.
    let ver = rsa_kid.rsplit('/').next().unwrap();
    admin(
        &h,
        "/__admin/vault/enabled",
        json!({"vault":"kv","kind":"keys","name":"rsa1","version":ver,"enabled":false}),
    )
    .await;
    let e = c
        .unwrap_key(&rsa_kid, "RSA-OAEP-256", &wrapped)
        .await
        .unwrap_err();
    assert!(
        matches!(e, VaultError::Disabled { .. }) && e.to_string().contains("disabled"),
        "{e}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let h = start(vec![ident("app", Some("p"), &["*"], false)], Some(2)).await;
    let c = client(&h, &sp_env(&h, "app", "p"));
    let url = format!("{}/__vault/r/secrets/x", h.url);
    c.set_secret(&url, &SecretString::new("v")).await.unwrap();
    for _ in 0..12 {
        c.get_secret(&url).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    let st = admin(&h, "/__admin/vault", serde_json::Value::Null).await;
    assert!(
        st["tokens_issued"]["client_credentials"].as_u64().unwrap() >= 3,
        "{st}"
    );
    h.shutdown().await;
}
