//! The operator CLI: a thin client of the operator HTTP API, with the same defaults as
//! `serve` (admin address and token file). It sends and reads the contract's own types
//! ([`crate::api`]). Human-readable output, or `--json`.
//!
//! Beside this file in `cli/`: `args.rs`, the arguments and subcommands; `show.rs`, the
//! text output.

mod args;
mod show;

pub use args::{ClientArgs, OriginalCmd, RequestCmd, UpgradedCmd};

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::api::{Deleted, Envelope, ListQuery, OneRequest, PutRequest, RequestList, StateChange};
use crate::http;
use show::{check, describe, row};

const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    base: String,
    token: String,
    json: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let token = match std::env::var("SFTPGATE_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => std::fs::read_to_string(&args.token_file)
                .with_context(|| {
                    format!(
                        "cannot read the admin token from {}",
                        args.token_file.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        if args.cacert.is_some() {
            http::init_tls(args.cacert.as_deref())?;
        }
        Ok(Client {
            base: args.admin.trim_end_matches('/').to_string(),
            token,
            json: args.json,
        })
    }

    /// Calls the API; a body with failures is an error, any other is read as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: http::Body,
        ctype: &str,
    ) -> anyhow::Result<T> {
        let auth = format!("Bearer {}", self.token);
        let url = format!("{}{path}", self.base);
        let resp = http::send(
            method,
            &url,
            &[("authorization", &auth), ("content-type", ctype)],
            body,
            TIMEOUT,
        )
        .await?;
        let status = resp.status();
        let bytes = http::body_bytes(resp).await?;
        let envelope: Envelope = serde_json::from_slice(&bytes)
            .with_context(|| format!("{url} answered {status} without the API's JSON"))?;
        check(&envelope.failures)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{url} answered {status} with JSON of another shape"))
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = match body {
            Some(b) => http::full(serde_json::to_string(b)?),
            None => http::empty(),
        };
        self.call(method, path, body, "application/json").await
    }

    fn print<T: Serialize>(&self, v: &T, human: impl FnOnce(&T) -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{}", human(v));
        }
    }

    pub async fn request(&self, cmd: RequestCmd) -> anyhow::Result<()> {
        match cmd {
            RequestCmd::Put {
                id,
                filename,
                key,
                ssh_keys,
                state,
                expires_at,
            } => {
                let ssh_keys = match ssh_keys {
                    Some(p) => Some(
                        std::fs::read_to_string(&p)
                            .with_context(|| format!("cannot read {}", p.display()))?,
                    ),
                    None => None,
                };
                let body = PutRequest {
                    filename,
                    key,
                    state,
                    ssh_keys,
                    expires_at: expires_at.map(|t| (t != "none").then_some(t)),
                };
                let v: OneRequest = self
                    .call_json(Method::PUT, &format!("/v1/requests/{id}"), Some(&body))
                    .await?;
                self.print(&v, |v| describe(&v.request));
            }
            RequestCmd::Show { id } => {
                let v: OneRequest = self
                    .call_json(Method::GET, &format!("/v1/requests/{id}"), None::<&()>)
                    .await?;
                self.print(&v, |v| describe(&v.request));
            }
            RequestCmd::List {
                limit,
                after,
                state,
                updated_since,
            } => {
                let v = self.list(limit, after, state, updated_since).await?;
                let more = v.next.filter(|_| limit.is_some());
                self.print(&v, |v| {
                    let mut out = if v.requests.is_empty() {
                        "no requests".into()
                    } else {
                        v.requests.iter().map(row).collect::<Vec<_>>().join("\n")
                    };
                    if let Some(next) = more {
                        out.push_str(&format!("\nmore: --after {next}"));
                    }
                    out
                });
            }
            RequestCmd::State { id, state } => {
                let v: OneRequest = self
                    .call_json(
                        Method::POST,
                        &format!("/v1/requests/{id}/state"),
                        Some(&StateChange { state }),
                    )
                    .await?;
                self.print(&v, |v| describe(&v.request));
            }
            RequestCmd::Delete { id, purge } => {
                let v: Deleted = self
                    .call_json(
                        Method::DELETE,
                        &format!("/v1/requests/{id}?purge={purge}"),
                        None::<&()>,
                    )
                    .await?;
                self.print(&v, |_| {
                    format!(
                        "request {id} deleted{}",
                        if purge { " with its files" } else { "" }
                    )
                });
            }
        }
        Ok(())
    }

    /// `GET /v1/requests`: the one page `limit` asks for, or else every page in turn,
    /// answered as one listing (`next` null).
    async fn list(
        &self,
        limit: Option<usize>,
        after: Option<u64>,
        state: Option<String>,
        updated_since: Option<String>,
    ) -> anyhow::Result<RequestList> {
        let mut after = after;
        let mut all = Vec::new();
        loop {
            let page_size = limit.unwrap_or(ListQuery::MAX_LIMIT as usize);
            let mut params = vec![("limit", page_size.to_string())];
            params.extend(after.map(|a| ("after", a.to_string())));
            params.extend(state.clone().map(|s| ("state", s)));
            params.extend(updated_since.clone().map(|t| ("updated_since", t)));
            let query = serde_urlencoded::to_string(&params)?;
            let page: RequestList = self
                .call_json(Method::GET, &format!("/v1/requests?{query}"), None::<&()>)
                .await?;
            if limit.is_some() {
                return Ok(page);
            }
            all.extend(page.requests);
            match page.next {
                // Each page starts past the last: a server that said otherwise would
                // loop this for ever.
                Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
                Some(next) => bail!("the API's next page ({next}) does not move forward"),
                None => {
                    return Ok(RequestList {
                        failures: Vec::new(),
                        requests: all,
                        next: None,
                    })
                }
            }
        }
    }

    pub async fn upgraded_put(&self, id: u64, file: &Path) -> anyhow::Result<()> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("cannot open {}", file.display()))?;
        let stream = ReaderStream::with_capacity(f, 256 * 1024).map_ok(Frame::data);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let v: OneRequest = self
            .call(
                Method::PUT,
                &format!("/v1/requests/{id}/upgraded"),
                body,
                "application/octet-stream",
            )
            .await?;
        self.print(&v, |v| {
            format!(
                "stored {} bytes as the upgraded dump of request {id}",
                v.request.upgraded_filesize.unwrap_or(0)
            )
        });
        Ok(())
    }

    pub async fn original_get(&self, id: u64, file: &Path) -> anyhow::Result<()> {
        let auth = format!("Bearer {}", self.token);
        let url = format!("{}/v1/requests/{id}/original", self.base);
        let resp = http::send(
            Method::GET,
            &url,
            &[("authorization", &auth)],
            http::empty(),
            TIMEOUT,
        )
        .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = http::body_bytes(resp).await?;
            let envelope: Envelope = serde_json::from_slice(&bytes).unwrap_or_default();
            check(&envelope.failures)?;
            bail!("{url}: unexpected answer {status}");
        }
        let mut out = tokio::fs::File::create(file)
            .await
            .with_context(|| format!("cannot create {}", file.display()))?;
        let mut body = resp.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                total += data.len() as u64;
                out.write_all(&data).await?;
            }
        }
        out.sync_all().await?;
        if self.json {
            println!("{}", serde_json::json!({"failures": [], "bytes": total}));
        } else {
            println!("saved {total} bytes to {}", file.display());
        }
        Ok(())
    }
}
