//! No secret reaches a log line, a Debug or a Display: at TRACE level (with
//! the `log` records of reqwest/hyper/rustls bridged in), a full CPK upload
//! and download with Shared Key and with a SAS, plus a 403 whose error body
//! carries the service's string-to-sign (including the CPK) and a 409, log
//! neither the account key, the CPK, the SAS signature nor any string-to-sign.

mod common;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use common::emu::{drain, random_key, Emu};
use common::*;
use cpkfs::blob::*;
use cpkfs_emulator::DEV_KEY1;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every textual form a secret could take in a log.
fn forms(label: &str, raw: &[u8]) -> Vec<(String, String)> {
    let b64 = STANDARD.encode(raw);
    let enc: String = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let dbg = format!("{:?}", &raw[..8]);
    vec![
        (format!("{label} (base64)"), b64.clone()),
        (format!("{label} (base64 url-encoded)"), enc),
        (format!("{label} (base64url)"), URL_SAFE_NO_PAD.encode(raw)),
        (format!("{label} (hex)"), hex(raw)),
        (format!("{label} (HEX)"), hex(raw).to_uppercase()),
        (
            format!("{label} (raw bytes Debug)"),
            dbg.trim_end_matches(']').to_string(),
        ),
        // A prefix long enough to be unique, short enough to catch truncation.
        (format!("{label} (base64 prefix)"), b64[..16].to_string()),
    ]
}

fn assert_clean(what: &str, text: &str, needles: &[(String, String)]) {
    for (label, n) in needles {
        assert!(
            !text.contains(n.as_str()),
            "{what} contains the {label}: …{}…",
            {
                let i = text.find(n.as_str()).unwrap();
                &text[i.saturating_sub(200)..(i + n.len() + 50).min(text.len())]
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_debug_or_display() {
    let buf = Buf::default();
    let w = buf.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .try_init()
        .expect("the only subscriber of this test binary");
    // try_init also installs the tracing-log bridge (a default feature of
    // tracing-subscriber), so the `log` records of rustls/reqwest arrive too.

    // The emulator in its own process: only the client's logs are captured.
    let emu = Emu::spawn();
    let key = random_key();
    let other = random_key();
    let account_raw = STANDARD.decode(DEV_KEY1).unwrap();
    let wrong_key_b64 =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";
    let wrong_raw = STANDARD.decode(wrong_key_b64).unwrap();

    // 1. Shared Key: create, upload (Put Blob and blocks), HEAD, read, list,
    // metadata, block list, delete — all with the CPK.
    let c = emu.client(&unique("sec"), Some(&key));
    c.create_container().await.unwrap();
    let data = pattern(3 * 1024 * 1024 + 7, 5);
    c.upload(
        "big",
        &data[..],
        &CommitOptions {
            metadata: [("mode".to_string(), "0644".to_string())].into(),
            ..Default::default()
        },
        Some(&key),
        UploadOptions {
            block_size: 1024 * 1024,
            concurrency: 2,
        },
    )
    .await
    .unwrap();
    c.put_blob(
        "small",
        Bytes::from_static(b"hi"),
        &CommitOptions::default(),
        Some(&key),
    )
    .await
    .unwrap();
    c.get_blob_properties("big", Some(&key), &Conditions::default())
        .await
        .unwrap();
    let got = drain(
        c.get_blob("big", None, Some(&key), &Conditions::default())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(got == data);
    c.set_blob_metadata(
        "small",
        &[("uid".to_string(), "1".to_string())].into(),
        Some(&key),
        &Conditions::default(),
    )
    .await
    .unwrap();
    c.list_blobs(&ListOptions {
        include_metadata: true,
        ..Default::default()
    })
    .await
    .unwrap();
    c.get_block_list("big", BlockListType::All).await.unwrap();
    // Server-side re-key: the source's key travels in x-ms-source-encryption-key
    // and a SAS for the source (made from the account key) in x-ms-copy-source.
    c.put_blob_from_url(
        "big-rekeyed",
        &CopySource {
            name: "big",
            key: Some(&key),
            if_match: None,
        },
        &CommitOptions::default(),
        Some(&other),
    )
    .await
    .unwrap();

    // 2. A SAS client doing the same kind of work.
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let token = sas::AccountSas {
        account: DEV_ACCOUNT,
        permissions: "rwdlac",
        services: "b",
        resource_types: "sco",
        start: None,
        expiry: &expiry,
        ip: None,
        protocol: "https",
        version: API_VERSION,
    }
    .token(&AccountKey::from_base64(DEV_KEY1).unwrap());
    let sig = token.rsplit("sig=").next().unwrap().to_string();
    let sig_decoded = percent_encoding::percent_decode_str(&sig)
        .decode_utf8()
        .unwrap()
        .to_string();
    let mut cfg = emu.config(
        c.container(),
        Credential::Sas(SasToken::parse(&token).unwrap()),
    );
    cfg.cpk = Some(Arc::new(key.clone()));
    let sas_client = BlobClient::new(cfg).unwrap();
    sas_client
        .put_blob(
            "via-sas",
            Bytes::from_static(b"sas"),
            &CommitOptions::default(),
            Some(&key),
        )
        .await
        .unwrap();
    sas_client
        .read_range(
            "via-sas",
            ByteRange::from(0),
            Some(&key),
            &Conditions::default(),
        )
        .await
        .unwrap();

    // 3. A 403: a wrong account key on a CPK request. The emulator's error body
    // holds its string-to-sign, which contains the CPK.
    let bad = BlobClient::new({
        let mut cfg = emu.config(
            c.container(),
            Credential::SharedKey(Arc::new(
                SharedKeyCredential::new(
                    DEV_ACCOUNT,
                    vec![AccountKey::from_base64(wrong_key_b64).unwrap()],
                )
                .unwrap(),
            )),
        );
        cfg.cpk = Some(Arc::new(key.clone()));
        cfg
    })
    .unwrap();
    let e403 = match bad
        .get_blob("big", None, Some(&key), &Conditions::default())
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("a wrong account key was accepted"),
    };
    assert_eq!(e403.status(), Some(403), "{e403}");
    let e403b = bad
        .put_blob(
            "x",
            Bytes::from_static(b"x"),
            &CommitOptions::default(),
            Some(&key),
        )
        .await
        .unwrap_err();
    // 4. A 409: another CPK.
    let e409 = c
        .get_blob_properties("big", Some(&other), &Conditions::default())
        .await
        .unwrap_err();
    assert!(e409.is_code("BlobCustomerSpecifiedEncryptionMismatch"));
    c.delete_blob("big", &Conditions::default()).await.unwrap();

    // What must never appear.
    let mut needles = forms("account key", &account_raw);
    needles.extend(forms("wrong account key", &wrong_raw));
    needles.extend(forms("CPK", key.raw().expose()));
    needles.extend(forms("other CPK", other.raw().expose()));
    needles.push(("SAS signature".into(), sig.clone()));
    needles.push(("SAS signature (decoded)".into(), sig_decoded));
    // Marks of a string-to-sign: the path-style canonicalized resource
    // (account twice), canonicalized CPK header lines, and the auth header.
    needles.push((
        "string-to-sign resource".into(),
        format!("/{DEV_ACCOUNT}/{DEV_ACCOUNT}/"),
    ));
    needles.push((
        "string-to-sign header line".into(),
        "x-ms-encryption-key:".into(),
    ));
    needles.push(("string-to-sign date line".into(), "x-ms-date:".into()));
    needles.push(("string to sign".into(), "string to sign".into()));
    needles.push(("string-to-sign".into(), "StringToSign".into()));
    needles.push((
        "Authorization header".into(),
        "SharedKey devstoreaccount1:".into(),
    ));

    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).to_string();
    // The copy source's SAS (its signature is not known here: look for its shape).
    assert!(
        !logs.contains("&sr=b&sig="),
        "a copy-source SAS reached the TRACE log"
    );
    // The capture is real: our client's request log, the log bridge and the
    // HTTP/TLS stack's own logs are all there.
    assert!(logs.contains("blob request"), "no client log captured");
    // rustls logs only through `log`: its lines prove the bridge.
    assert!(
        logs.contains(" rustls::"),
        "no rustls (log crate) record captured"
    );
    assert!(logs.contains("reqwest::"), "no reqwest record captured");
    assert!(logs.contains("TRACE"), "not at TRACE level");
    assert!(
        logs.len() > 10_000,
        "suspiciously few logs: {} bytes",
        logs.len()
    );
    assert_clean("the TRACE log", &logs, &needles);

    // Debug and Display of clients, credentials, keys and errors.
    let mut texts = vec![
        ("Debug of the client", format!("{c:?}")),
        ("Debug of the SAS client", format!("{sas_client:?}")),
        ("Debug of the bad client", format!("{bad:?}")),
        ("Debug of the CPK", format!("{key:?}")),
        (
            "Debug of a SAS credential",
            format!("{:?}", Credential::Sas(SasToken::parse(&token).unwrap())),
        ),
        (
            "Debug of an account key",
            format!("{:?}", AccountKey::from_base64(DEV_KEY1).unwrap()),
        ),
    ];
    for (n, e) in [("403", &e403), ("403 put", &e403b), ("409", &e409)] {
        texts.push(("an error Display", format!("{n}: {e}")));
        texts.push(("an error Debug", format!("{n}: {e:?}")));
    }
    for (what, t) in &texts {
        assert_clean(what, t, &needles);
    }
    assert!(
        texts[0].1.contains(key.sha256()),
        "client Debug shows the key hash"
    );
    assert!(e403.to_string().contains("AuthenticationFailed"), "{e403}");
    emu.shutdown().await;
}
