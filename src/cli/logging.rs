//! Logs: stderr in the foreground; a file or syslog (journald picks it up)
//! when daemonized. Our crate at the chosen level; HTTP and TLS libraries at
//! `warn` at most, so nothing they print can carry a header value.

use anyhow::{Context, Result};
use std::ffi::CString;
use std::io::Write;
use std::path::Path;

pub enum Target<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

/// A writer that sends each line to syslog(3).
struct Syslog;

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let prio = if line.contains("ERROR") {
                libc::LOG_ERR
            } else if line.contains("WARN") {
                libc::LOG_WARNING
            } else if line.contains("DEBUG") || line.contains("TRACE") {
                libc::LOG_DEBUG
            } else {
                libc::LOG_INFO
            };
            if let Ok(c) = CString::new(line.replace('%', "%%")) {
                unsafe { libc::syslog(prio, c.as_ptr()) };
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init(level: &str, target: Target<'_>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("warn,cpkfs={level}"))
        .with_context(|| {
            format!("invalid log level {level:?} (error, warn, info, debug, trace)")
        })?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match target {
        Target::Stderr => b.with_writer(std::io::stderr).init(),
        Target::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open the log file {}", p.display()))?;
            b.with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init()
        }
        Target::Syslog => {
            static IDENT: &[u8] = b"cpkfs\0";
            unsafe {
                libc::openlog(
                    IDENT.as_ptr() as *const libc::c_char,
                    libc::LOG_PID,
                    libc::LOG_DAEMON,
                )
            };
            b.with_ansi(false)
                .without_time()
                .with_writer(|| Syslog)
                .init()
        }
    }
    Ok(())
}
