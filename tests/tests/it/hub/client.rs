//! A browser-like client of the Hub for the plain-HTTP tests.

use anyhow::Context;
use pulse_tests::TestEnv;
use reqwest::{StatusCode, header};

/// A browser-like client of the Hub: follows no redirects, keeps the session cookie by hand.
pub struct Hub {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: String,
    pub csrf: String,
}

pub fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

impl Hub {
    pub async fn sign_in(env: &TestEnv, key: &str) -> anyhow::Result<Hub> {
        let http = no_redirects();
        let form = http.get(format!("{}/hub/login", env.base)).send().await?;
        assert_eq!(form.status(), StatusCode::OK);
        let login_cookie = set_cookie(&form, "pulse_hub_login").context("sign-in cookie")?;
        let token = login_cookie["pulse_hub_login=".len()..]
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let html = form.text().await?;
        assert_eq!(
            between(&html, r#"name="csrf" value=""#, "\""),
            Some(token.as_str())
        );
        let resp = http
            .post(format!("{}/hub/login", env.base))
            .header(header::COOKIE, format!("pulse_hub_login={token}"))
            .form(&[
                ("csrf", token.as_str()),
                ("api_key", key),
                ("next", "/hub/sequences"),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == StatusCode::SEE_OTHER,
            "sign-in answered {}",
            resp.status()
        );
        let session = set_cookie(&resp, "pulse_hub").context("session cookie")?;
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/hub"] {
            assert!(
                session.contains(attr),
                "session cookie lacks {attr}: {session}"
            );
        }
        let cookie = session.split(';').next().unwrap_or_default().to_owned();
        let mut hub = Hub {
            http,
            base: env.base.clone(),
            cookie,
            csrf: String::new(),
        };
        let (status, page) = hub.get("/hub/sequences").await?;
        assert_eq!(status, StatusCode::OK, "{page}");
        hub.csrf = between(&page, r#"<meta name="csrf-token" content=""#, "\"")
            .context("csrf meta")?
            .to_owned();
        Ok(hub)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .send()
            .await?;
        Ok((r.status(), r.text().await?))
    }

    /// Posts a form with this session's CSRF token; returns the status and the redirect target.
    pub async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, Some(&self.cookie), &all).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let r = req.send().await?;
        let location = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((r.status(), location))
    }
}

impl Hub {
    /// Posts a form with this session's CSRF token; returns the status and the page answered
    /// (an editor button, or a form shown again with what to fix).
    pub async fn post_page(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .form(&all)
            .send()
            .await?;
        Ok((r.status(), r.text().await?))
    }
}
