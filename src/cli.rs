//! The operator CLI: a thin client of the operator HTTP API, with the same defaults as
//! `serve` (admin address and token file). It sends and reads the contract's own types
//! ([`crate::api`]). Human-readable output, or `--json`.

use std::path::{Path, PathBuf};
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

use crate::api::{
    Deleted, Envelope, Failure, ListQuery, OneRequest, PutRequest, RequestList, RequestView,
    StateChange,
};
use crate::http;

/// A request id argument: spelt as the API spells ids (no sign, no leading zeros).
fn id_arg(text: &str) -> Result<u64, String> {
    crate::api::parse_id(text).ok_or_else(|| "a request id is a positive integer".to_string())
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Operator API base URL
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2280",
        value_name = "URL"
    )]
    admin: String,
    /// Admin token file (SFTPGATE_ADMIN_TOKEN wins)
    #[arg(
        long,
        global = true,
        default_value = "data/admin.token",
        value_name = "FILE"
    )]
    token_file: PathBuf,
    /// Print the API's JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    /// CA certificate (PEM) to trust for an https:// --admin, besides the system's roots
    #[arg(long, global = true, value_name = "FILE")]
    cacert: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum RequestCmd {
    /// Create or update a request
    Put {
        #[arg(value_parser = id_arg)]
        id: u64,
        #[arg(long)]
        filename: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// authorized_keys file of the customer's public keys
        #[arg(long, value_name = "FILE")]
        ssh_keys: Option<PathBuf>,
        #[arg(long)]
        state: Option<String>,
        /// RFC 3339 time, or "none" to clear
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Show one request
    Show {
        #[arg(value_parser = id_arg)]
        id: u64,
    },
    /// List requests in id order: all of them (read a page of 1000 at a time), or with
    /// --limit one page, whose last line names the --after of the next
    List {
        /// Only this many (1 to 1000): one page
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only requests with ids above this one
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        /// Only requests in this state
        #[arg(long)]
        state: Option<String>,
        /// Only requests updated at or after this RFC 3339 time
        #[arg(long, value_name = "TIME")]
        updated_since: Option<String>,
    },
    /// Change a request's state
    State {
        #[arg(value_parser = id_arg)]
        id: u64,
        state: String,
    },
    /// Revoke a request (its sessions are closed)
    Delete {
        #[arg(value_parser = id_arg)]
        id: u64,
        /// Also delete its files
        #[arg(long)]
        purge: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum UpgradedCmd {
    /// Upload the upgraded dump of a request
    Put {
        #[arg(value_parser = id_arg)]
        id: u64,
        file: PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum OriginalCmd {
    /// Download the customer's upload of a request
    Get {
        #[arg(value_parser = id_arg)]
        id: u64,
        file: PathBuf,
    },
}

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

/// Fails with the API's failure messages, if any.
fn check(failures: &[Failure]) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: {}", f.reason, f.message))
        .collect();
    bail!("{}", lines.join("\n"))
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn describe(r: &RequestView) -> String {
    let keys: Vec<String> = r
        .ssh_keys
        .iter()
        .map(|k| format!("{} {} ({})", k.fingerprint, k.comment, k.algorithm))
        .collect();
    format!(
        "request {} ({})\n  file:         {} ({} bytes uploaded, upgraded: {})\n  shared file:  {}\n  connect:      {}\n  expires:      {}\n  keys:         {}\n  sessions:     {} {}",
        r.id,
        r.state.as_str(),
        r.filename,
        r.filesize,
        or_dash(r.upgraded_filesize),
        or_dash(r.shared_file.as_ref()),
        r.sample_command,
        or_dash(r.expires_at.and_then(crate::api::time_format::format)),
        if keys.is_empty() { "-".into() } else { keys.join("\n                ") },
        r.sessions,
        r.peers.join(", "),
    )
}

fn row(r: &RequestView) -> String {
    format!(
        "{:>8}  {:<9}  {:<32}  {:>12} bytes  {} sessions",
        r.id,
        r.state.as_str(),
        r.filename,
        r.filesize,
        r.sessions
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_spelt_as_the_api_spells_them() {
        assert_eq!(super::id_arg("10534"), Ok(10534));
        for bad in ["+5", "05", "0", "-1", "5x", ""] {
            assert!(super::id_arg(bad).is_err(), "{bad}");
        }
    }
}
