//! Used by `scripts/demo`: write a blob with a customer-provided key, read it
//! back with the key, then show that without the key (or with another one)
//! the service refuses to return it.
//!
//! `cpk_demo --endpoint URL --ca FILE --key-file FILE [--container NAME]`

use bytes::Bytes;
use cpkfs::blob::*;
use std::sync::Arc;

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip_while(|a| a != name);
    it.next()?;
    it.next()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = arg("--endpoint").ok_or_else(|| anyhow::anyhow!("--endpoint URL"))?;
    let ca = arg("--ca").ok_or_else(|| anyhow::anyhow!("--ca FILE"))?;
    let key_file = arg("--key-file").ok_or_else(|| anyhow::anyhow!("--key-file FILE"))?;
    let container = arg("--container").unwrap_or_else(|| "demo".into());
    let key = CustomerKey::from_base64(&std::fs::read_to_string(&key_file)?, None)?;
    let cred = Credential::SharedKey(Arc::new(SharedKeyCredential::new(
        DEV_ACCOUNT,
        vec![AccountKey::from_base64(DEV_ACCOUNT_KEY)?],
    )?));
    let mut cfg = ClientConfig::new(&endpoint, DEV_ACCOUNT, &container, cred);
    cfg.ca_pem = Some(std::fs::read(&ca)?);
    cfg.cpk = Some(Arc::new(key.clone()));
    let c = BlobClient::new(cfg)?;
    match c.create_container().await {
        Err(e) if !e.is_code("ContainerAlreadyExists") => return Err(e.into()),
        _ => {}
    }

    // `--inspect`: look at blobs written through the mount, behind its back.
    if std::env::args().any(|a| a == "--inspect") {
        let page = c
            .list_blobs(&ListOptions {
                include_metadata: true,
                ..Default::default()
            })
            .await?;
        for b in &page.blobs {
            if b.properties
                .metadata
                .get("hdi_isfolder")
                .map(String::as_str)
                == Some("true")
            {
                println!(
                    "{:<24} directory marker (holds no data; written without the key)",
                    b.name
                );
                continue;
            }
            let hash = b.properties.cpk_sha256.as_deref().unwrap_or("none");
            let plain = match c
                .read_range(&b.name, ByteRange::from(0), None, &Conditions::default())
                .await
            {
                Ok(_) => "READABLE WITHOUT THE KEY".to_string(),
                Err(e) => format!("without the key: {}", e.code().unwrap_or("error")),
            };
            println!(
                "{:<24} {:>8} bytes  key SHA-256 {}  {}",
                b.name, b.properties.content_length, hash, plain
            );
            if b.properties.content_length > 0 {
                anyhow::ensure!(hash == key.sha256(), "{} is not under the demo key", b.name);
            }
        }
        return Ok(());
    }

    let text = b"Hello from cpkfs: this blob is encrypted with your key.\n";
    let w = c
        .put_blob(
            "hello.txt",
            Bytes::from_static(text),
            &CommitOptions::default(),
            Some(&key),
        )
        .await?;
    println!(
        "wrote {container}/hello.txt with the key whose SHA-256 is {}",
        key.sha256()
    );
    assert_eq!(w.cpk_sha256.as_deref(), Some(key.sha256()));

    let (got, p) = c
        .read_range(
            "hello.txt",
            ByteRange::from(0),
            Some(&key),
            &Conditions::default(),
        )
        .await?;
    anyhow::ensure!(&got[..] == text, "read back different bytes");
    println!(
        "read it back WITH the key: {:?}",
        String::from_utf8_lossy(&got).trim_end()
    );
    println!(
        "  server-encrypted: {}, key hash: {}",
        p.server_encrypted,
        p.cpk_sha256.unwrap_or_default()
    );

    let page = c.list_blobs(&ListOptions::default()).await?;
    if let Some(b) = page.blobs.iter().find(|b| b.name == "hello.txt") {
        println!(
            "the listing (no key needed) shows only the key's hash: {}",
            b.properties.cpk_sha256.as_deref().unwrap_or("-")
        );
    }

    match c
        .read_range(
            "hello.txt",
            ByteRange::from(0),
            None,
            &Conditions::default(),
        )
        .await
    {
        Ok(_) => anyhow::bail!("the blob was readable WITHOUT the key: not encrypted?"),
        Err(e) if e.is_code("BlobUsesCustomerSpecifiedEncryption") => {
            println!("reading it WITHOUT the key fails as it should:\n  {e}")
        }
        Err(e) => anyhow::bail!("unexpected error without the key: {e}"),
    }
    let mut other = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut other[..]);
    match c
        .read_range(
            "hello.txt",
            ByteRange::from(0),
            Some(&CustomerKey::from_raw(other)),
            &Conditions::default(),
        )
        .await
    {
        Ok(_) => anyhow::bail!("the blob was readable with ANOTHER key"),
        Err(e) if e.is_code("BlobCustomerSpecifiedEncryptionMismatch") => {
            println!("reading it with ANOTHER key fails too:\n  {e}")
        }
        Err(e) => anyhow::bail!("unexpected error with another key: {e}"),
    }
    Ok(())
}
