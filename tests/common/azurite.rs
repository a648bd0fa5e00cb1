//! Start Microsoft's Azurite (npm) on a free loopback port, blob service only,
//! in memory. Killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Azurite {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl` makes a CA and a leaf for 127.0.0.1 signed by it, in `dir`:
/// ca.pem, cert.pem, key.pem.
fn make_tls(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (install with scripts/setup)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=azurite test CA",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "cert.pem",
    ]);
}

impl Azurite {
    pub fn start() -> Azurite {
        Self::start_with(false)
    }

    /// Azurite over HTTPS (so a client may send customer-provided keys to it);
    /// the CA to trust is [`Azurite::ca_pem`].
    pub fn start_https() -> Azurite {
        Self::start_with(true)
    }

    /// The PEM of the CA behind an HTTPS Azurite's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self._dir.path().join("ca.pem")).expect("an HTTPS Azurite")
    }

    fn start_with(https: bool) -> Azurite {
        let bin = std::env::var("AZURITE_BLOB").unwrap_or_else(|_| "azurite-blob".into());
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&bin);
        if https {
            make_tls(dir.path());
            cmd.args(["--cert", "cert.pem", "--key", "key.pem"]);
        }
        let child = cmd
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--disableTelemetry", "--inMemoryPersistence"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (install with `npm install -g azurite@3.37.0`): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite {
            child,
            url: format!(
                "{}://127.0.0.1:{port}/devstoreaccount1",
                if https { "https" } else { "http" }
            ),
            _dir: dir,
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
