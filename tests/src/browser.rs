//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`), for the
//! Hub's end-to-end tests: a small client of the W3C WebDriver protocol over reqwest, enough to
//! open pages, find elements, click, type, answer `confirm()` dialogs and take screenshots.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The WebDriver id of an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the Chromium binary and its driver are (Debian's packages).
pub fn chromium_paths() -> (PathBuf, PathBuf) {
    let binary =
        std::env::var("PULSE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver =
        std::env::var("PULSE_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    (binary.into(), driver.into())
}

/// A chromedriver process and one browser session in it; both end on drop.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    base: String,
    driver: Child,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with a laptop-sized window.
    /// Screenshots go to `shots`.
    pub async fn start(shots: &Path) -> anyhow::Result<Self> {
        let (binary, driver_path) = chromium_paths();
        if !binary.exists() || !driver_path.exists() {
            bail!(
                "{} or {} is missing: run deploy/local/browser.sh (make test does) to install \
                 Debian's chromium and chromium-driver",
                binary.display(),
                driver_path.display()
            );
        }
        let port = crate::free_port()?;
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut up = false;
        for _ in 0..100 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            http,
            session: String::new(),
            base,
            driver,
            shots: shots.to_path_buf(),
        };
        if !up {
            bail!("chromedriver did not answer on port {port}");
        }
        std::fs::create_dir_all(shots)?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1366,900", "--no-first-run"]
            }
        }}});
        let v = browser.raw("POST", "/session", Some(caps)).await?;
        browser.session = v["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?
            .to_owned();
        Ok(browser)
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("WebDriver {method} {path}: {status} {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await?;
        Ok(())
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .cmd("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's visible text.
    pub async fn text(&self) -> anyhow::Result<String> {
        let body = self.find("body").await?;
        self.element_text(&body).await
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("no element matches {css}"))?;
        Ok(v[ELEMENT].as_str().unwrap_or_default().to_owned())
    }

    /// Every element matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nothing matched {css} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn element_text(&self, element: &str) -> anyhow::Result<String> {
        Ok(self
            .cmd("GET", &format!("/element/{element}/text"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.find(css).await?;
        self.cmd("POST", &format!("/element/{e}/click"), None)
            .await?;
        Ok(())
    }

    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let e = self.find(css).await?;
        self.cmd("POST", &format!("/element/{e}/clear"), None)
            .await?;
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await?;
        Ok(())
    }

    /// Accepts the `confirm()` dialog that is open, waiting a little for it; returns its text.
    pub async fn accept_dialog(&self) -> anyhow::Result<String> {
        for _ in 0..50 {
            if let Ok(v) = self.cmd("GET", "/alert/text", None).await {
                self.cmd("POST", "/alert/accept", None).await?;
                return Ok(v.as_str().unwrap_or_default().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no dialog opened")
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn script(&self, js: &str) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the window as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let v = self.cmd("GET", "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

impl Browser {
    /// Ends the browser session (Chromium exits), then chromedriver.
    pub async fn quit(self) -> anyhow::Result<()> {
        self.raw("DELETE", &format!("/session/{}", self.session), None)
            .await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
