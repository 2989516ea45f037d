//! Starting a real Prometheus (the Debian package) on a free loopback port, scraping the
//! sandbox's exporter every second, with temporary storage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How to install Prometheus when it is missing.
pub const INSTALL_HINT: &str = "install it with `sudo apt-get install -y prometheus` (Debian/Ubuntu); the sandbox starts it itself";

/// A running Prometheus, stopped (and waited for) on `stop` or drop.
#[derive(Debug)]
pub struct Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: Option<tokio::process::Child>,
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback port (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A minimal HTTP GET on loopback: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The generated configuration: a scrape of the exporter every `scrape_s` seconds.
pub fn config(exporter: &str, scrape_s: u64) -> String {
    let s = scrape_s.max(1);
    format!(
        "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n  evaluation_interval: {s}s\nscrape_configs:\n  - job_name: rolloutctl-sandbox\n    honor_labels: true\n    static_configs:\n      - targets: [\"{exporter}\"]\n"
    )
}

impl Prometheus {
    /// Starts Prometheus if it is installed; waits until it is ready and has scraped the
    /// exporter. `Err` says why not.
    pub async fn start(dir: &Path, exporter: &str, scrape_s: u64) -> Result<Prometheus, String> {
        let bin = which("prometheus")
            .ok_or_else(|| format!("Prometheus is not on PATH: {INSTALL_HINT}"))?;
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config(exporter, scrape_s)).map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-lifecycle")
            .arg("--query.lookback-delta=30s")
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start Prometheus: {e}"))?;
        let mut p = Prometheus {
            url: format!("http://{addr}"),
            child: Some(child),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30 + 2 * scrape_s);
        loop {
            // Ready, and the exporter scraped once: Prometheus's discovery manager hands new
            // targets to the scrape loop only every 5 s, so "ready" alone can mean no data yet.
            if let Ok((200, _)) = http_get(&addr, "/-/ready").await
                && let Ok((200, body)) = http_get(&addr, "/api/v1/query?query=up").await
                && body.contains("\"1\"]")
            {
                return Ok(p);
            }
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                return Err(format!(
                    "Prometheus exited ({status}): {}",
                    log.lines().last().unwrap_or("")
                ));
            }
            if tokio::time::Instant::now() > deadline {
                p.stop().await;
                return Err("Prometheus did not become ready within 30s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Stops Prometheus and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}
