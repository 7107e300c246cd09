//! The CLI speaking to a running server (`--server URL`): JSON requests
//! with the bearer token, problem documents turned into errors, and SSE
//! streams.

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// A server's base URL and token.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// One server-sent event: its name and data.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) event: String,
    pub(crate) data: Value,
}

impl Remote {
    /// A client of the server at `base` (`http://host:port`).
    pub(crate) fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base = Url::parse(base).with_context(|| format!("--server {base:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("--server must be an http:// or https:// URL (got {base})");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self { base, token, http })
    }

    /// The URL of `segments` (each percent-encoded as one path segment)
    /// with `query` (pairs whose value is `None` are left out).
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                if let Some(value) = value {
                    pairs.append_pair(name, value);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and reads its JSON answer (`Value::Null` for 204);
    /// an error answer becomes an error naming its status, code and
    /// detail.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = response.text().await?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .with_context(|| format!("{method} {url}: the answer is not JSON"));
        }
        bail!("{method} {url}: {}", problem_text(status, &text))
    }

    /// `GET` and JSON.
    pub(crate) async fn get(&self, url: Url) -> anyhow::Result<Value> {
        self.send(Method::GET, url, None, &[]).await
    }

    /// Opens an SSE stream (`GET`).
    pub(crate) async fn stream(
        &self,
        url: Url,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<Sent>> + Unpin + use<>> {
        let response = self
            .request(Method::GET, url.clone())
            .header("accept", "text/event-stream")
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("GET {url}: {}", problem_text(status, &text));
        }
        Ok(response.bytes_stream().eventsource().map(|event| {
            let event = event.context("the stream broke")?;
            Ok(Sent {
                event: event.event,
                data: serde_json::from_str(&event.data).unwrap_or(Value::String(event.data)),
            })
        }))
    }
}

/// `404 key_not_found: no value at a` from a problem document, or the
/// status and body as they came.
fn problem_text(status: StatusCode, body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(problem) if problem["code"].is_string() => format!(
            "{} {}: {}",
            status.as_u16(),
            problem["code"].as_str().unwrap_or_default(),
            problem["detail"].as_str().unwrap_or_default()
        ),
        _ => format!("{status}: {}", body.chars().take(500).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_and_empty_queries_dropped() {
        let remote = Remote::new("http://127.0.0.1:7700/", None).unwrap();
        let url = remote.url(&["v1", "state", "team/plan a"], &[("revision", None)]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7700/v1/state/team%2Fplan%20a"
        );
        let url = remote.url(&["v1", "events"], &[("after", Some("5".into()))]);
        assert_eq!(url.as_str(), "http://127.0.0.1:7700/v1/events?after=5");
        assert!(Remote::new("ftp://host", None).is_err());
        assert!(Remote::new("not a url", None).is_err());
    }

    #[test]
    fn problems_read_as_status_code_and_detail() {
        let body = r#"{"type":"urn:smalltalk:problem:key_not_found","title":"Not Found","status":404,"detail":"no value at a","code":"key_not_found"}"#;
        assert_eq!(
            problem_text(StatusCode::NOT_FOUND, body),
            "404 key_not_found: no value at a"
        );
        assert_eq!(
            problem_text(StatusCode::BAD_GATEWAY, "upstream down"),
            "502 Bad Gateway: upstream down"
        );
    }
}
